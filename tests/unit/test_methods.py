"""Comparison methods (gradnorm, fisher, sam, extragradient, gradientmix), single process.

Each method's gradient on a tiny float64 MLP is checked against a reference written
here from the method's formula, then every method runs end to end through the real
trainer for two steps.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dreg_dist.config import Config, ConfigError, build_method, load_config
from dreg_dist.methods import BUILTIN, StepContext, method_class
from dreg_dist.methods._util import seed_from
from dreg_dist.methods.gradientmix import mix_weights

REPO = Path(__file__).resolve().parents[2]
DT = torch.float64
NEW_METHODS = ["gradnorm", "fisher", "sam", "extragradient", "gradientmix"]


def _mlp(seed: int = 0, bn: bool = False) -> nn.Module:
    torch.manual_seed(seed)
    layers: list[nn.Module] = [nn.Linear(6, 5)]
    if bn:
        layers.append(nn.BatchNorm1d(5))
    layers += [nn.Tanh(), nn.Linear(5, 3)]
    return nn.Sequential(*layers).to(DT)


def _data(n: int = 10, seed: int = 1) -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 6, generator=g, dtype=DT), torch.randint(0, 3, (n,), generator=g)


def _ctx(model: nn.Module, lr: float | None = None, step: int | None = None) -> StepContext:
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    return StepContext(model, model, contextlib.nullcontext, scaler, lr=lr, step=step)


def _cfg(method: str, **methods: object) -> Config:
    cfg = Config()
    cfg.method = method
    cfg.train.seed = 3
    cfg.method_config = method_class(method).Config(**methods)
    return cfg


def _method_grads(method_name: str, model: nn.Module, batches: list[tuple[Tensor, Tensor]], **kw: object):
    cfg = _cfg(method_name, **kw.pop("methods", {}))  # type: ignore[arg-type]
    method = build_method(cfg)
    parts = method.compute_gradients(_ctx(model, **kw), batches)  # type: ignore[arg-type]
    return [p.grad.detach().clone() for p in model.parameters()], parts


def _close(a: list[Tensor], b: list[Tensor]) -> None:
    for x, y in zip(a, b, strict=True):
        torch.testing.assert_close(x, y, rtol=1e-10, atol=1e-12)


def _split(x: Tensor, y: Tensor, sizes: list[int]) -> list[tuple[Tensor, Tensor]]:
    return list(zip(x.split(sizes), y.split(sizes)))


# --------------------------------------------------------------------- references
def _ref_penalty(model: nn.Module, batches, m: int, lam: float, fisher: bool, seed: int, step: int):
    """Hand-written double backprop over the same micro-batch split."""
    params = list(model.parameters())
    total_n = sum(len(y) for _, y in batches)
    objective = torch.zeros((), dtype=DT)
    penalties = []
    position = 0
    for x, y in batches:
        for s in range(0, len(y), m):
            xm, ym = x[s : s + m], y[s : s + m]
            logits = model(xm)
            ce = F.cross_entropy(logits, ym)
            if fisher:
                gen = torch.Generator().manual_seed(seed_from(seed, step, position + s))
                probs = torch.softmax(logits.detach(), dim=1)
                labels = torch.multinomial(probs, 1, generator=gen).squeeze(1)
                r = F.cross_entropy(logits, labels)
            else:
                r = ce
            g = torch.autograd.grad(r, params, create_graph=True)
            p = sum((gi**2).sum() for gi in g)
            penalties.append(float(p.detach()) * len(ym) / total_n)
            objective = objective + (ce + lam * p) * len(ym) / total_n
        position += len(y)
    return list(torch.autograd.grad(objective, params)), sum(penalties)


def _mean_loss_grad(model: nn.Module, batches) -> list[Tensor]:
    loss = sum(F.cross_entropy(model(x), y) for x, y in batches) / len(batches)
    return list(torch.autograd.grad(loss, list(model.parameters())))


def _grad_at(model: nn.Module, batches, deltas: list[Tensor]) -> list[Tensor]:
    shifted = _copy(model)
    with torch.no_grad():
        for p, d in zip(shifted.parameters(), deltas):
            p.add_(d)
    return _mean_loss_grad(shifted, batches)


def _copy(model: nn.Module) -> nn.Module:
    import copy

    return copy.deepcopy(model)


# --------------------------------------------------------------------- gradnorm / fisher
@pytest.mark.parametrize("fisher", [False, True])
def test_penalty_matches_double_backprop(fisher: bool) -> None:
    model = _mlp()
    x, y = _data(10)
    batches = _split(x, y, [6, 4])  # two accumulation micro-batches; m=4 cuts them into 4+2 and 4
    name, lam = ("fisher", 0.3) if fisher else ("gradnorm", 0.2)
    methods = {"micro_batch_size": 4, "lam": lam}
    ref, ref_pen = _ref_penalty(_copy(model), batches, 4, lam, fisher, seed=3, step=5)
    got, parts = _method_grads(name, model, batches, methods=methods, step=5)
    _close(got, ref)
    assert float(parts["penalty"]) == pytest.approx(ref_pen, rel=1e-6)  # logged in float32
    assert float(parts["loss"]) == pytest.approx(float(F.cross_entropy(_mlp()(x), y).detach()), rel=1e-6)


def test_penalty_zero_lambda_is_plain_gradient() -> None:
    model = _mlp()
    batches = _split(*_data(8), [8])
    got, _ = _method_grads("gradnorm", model, batches, methods={"lam": 0.0, "micro_batch_size": 3})
    _close(got, _mean_loss_grad(_mlp(), batches))  # equal-weighted chunks of 3, 3, 2 recompose the mean CE


def test_fisher_sampling_is_seeded_per_step() -> None:
    batches = _split(*_data(12), [12])
    methods = {"lam": 1.0, "micro_batch_size": 4}
    a, _ = _method_grads("fisher", _mlp(), batches, methods=methods, step=7)
    b, _ = _method_grads("fisher", _mlp(), batches, methods=methods, step=7)
    c, _ = _method_grads("fisher", _mlp(), batches, methods=methods, step=8)
    _close(a, b)
    assert any(not torch.allclose(u, v) for u, v in zip(a, c))


def test_penalty_methods_refuse_compile() -> None:
    from dreg_dist.train.preflight import check_method_options

    cfg = _cfg("gradnorm")
    cfg.train.compile = True
    with pytest.raises(ConfigError, match="compile"):
        check_method_options(cfg, build_method(cfg))


# --------------------------------------------------------------------- sam / extragradient
def _ref_per_chunk(model: nn.Module, batches, m: int | None, delta) -> list[Tensor]:
    """Sum over chunks of m samples (each micro-batch cut; None: the whole local batch) of
    (chunk size / local batch) x the chunk's gradient at w + delta(chunk's gradient at w, size)."""
    total_n = sum(len(y) for _, y in batches)
    groups = [batches] if m is None else [[(x[s:s + m], y[s:s + m])] for x, y in batches for s in range(0, len(y), m)]
    out = [torch.zeros_like(p) for p in model.parameters()]
    for group in groups:
        n = sum(len(y) for _, y in group)
        g = _weighted_grad(model, group)
        at = _weighted_grad(_shifted(model, delta(g, n)), group)
        out = [o + a * n / total_n for o, a in zip(out, at)]
    return out


def _weighted_grad(model: nn.Module, group) -> list[Tensor]:
    n = sum(len(y) for _, y in group)
    loss = sum(F.cross_entropy(model(x), y) * len(y) / n for x, y in group)
    return list(torch.autograd.grad(loss, list(model.parameters())))


def _shifted(model: nn.Module, deltas: list[Tensor]) -> nn.Module:
    shifted = _copy(model)
    with torch.no_grad():
        for p, d in zip(shifted.parameters(), deltas):
            p.add_(d)
    return shifted


def _sam_delta(rho: float):
    def delta(g: list[Tensor], n: int) -> list[Tensor]:
        norm = torch.sqrt(sum((gi**2).sum() for gi in g))
        return [rho * gi / (norm + 1e-12) for gi in g]
    return delta


@pytest.mark.parametrize("m", [3, 6, None])
def test_sam_per_chunk_formula_and_exact_restore(m: int | None) -> None:
    """m-sharpness: each chunk of m samples ascends along its own gradient; None is the
    earlier releases' one ascent from the whole local batch."""
    model = _mlp()
    before = [p.detach().clone() for p in model.parameters()]
    batches = _split(*_data(12), [6, 6])
    rho = 0.07
    ref = _ref_per_chunk(_mlp(), batches, m, _sam_delta(rho))
    got, parts = _method_grads("sam", model, batches, methods={"rho": rho, "micro_batch_size": m})
    _close(got, ref)
    for p, b in zip(model.parameters(), before):
        assert torch.equal(p, b)  # weights restored bit for bit
    assert set(parts) == {"loss", "loss_perturbed", "local_grad_norm"}
    assert float(parts["loss_perturbed"]) > float(parts["loss"])  # an ascent step
    if m is None:
        g = _mean_loss_grad(_mlp(), batches)
        assert float(parts["local_grad_norm"]) == pytest.approx(float(torch.sqrt(sum((gi**2).sum() for gi in g))))


def test_sam_chunks_differ_from_one_ascent_and_do_not_depend_on_the_split() -> None:
    """The same 12 samples as 2 micro-batches of 6 or 4 of 3 give the same m=3 gradient (up
    to rounding), and it is not the whole-batch ascent's."""
    x, y = _data(12)
    two, _ = _method_grads("sam", _mlp(), _split(x, y, [6, 6]), methods={"micro_batch_size": 3})
    four, _ = _method_grads("sam", _mlp(), _split(x, y, [3, 3, 3, 3]), methods={"micro_batch_size": 3})
    whole, _ = _method_grads("sam", _mlp(), _split(x, y, [6, 6]), methods={"micro_batch_size": None})
    for a, b in zip(two, four):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)
    assert max((a - b).abs().max().item() for a, b in zip(two, whole)) > 1e-4


def test_sam_leaves_batchnorm_stats_of_the_ascent_pass_out() -> None:
    model = _mlp(bn=True)
    x, y = _data(10)
    got, _ = _method_grads("sam", model, [(x, y)], methods={"rho": 0.05, "micro_batch_size": None})
    # Reference: only the second forward (at w + e) may move the running statistics.
    ref_model = _mlp(bn=True)
    g = _mean_loss_grad(_copy(ref_model), [(x, y)])
    norm = torch.sqrt(sum((gi**2).sum() for gi in g))
    ref = _grad_at(ref_model, [(x, y)], [0.05 * gi / (norm + 1e-12) for gi in g])
    _close(got, ref)
    shifted = _copy(_mlp(bn=True))
    with torch.no_grad():
        for p, gi in zip(shifted.parameters(), g):
            p.add_(0.05 * gi / (norm + 1e-12))
    shifted(x)
    torch.testing.assert_close(model[1].running_mean, shifted[1].running_mean)
    assert int(model[1].num_batches_tracked) == 1


@pytest.mark.parametrize("rule, explicit_gamma, m", [
    ("micro_batch", None, 3), ("micro_batch", None, None), ("lr", None, 3), ("lr", None, None),
    ("micro_batch", 0.5, 3),
])
def test_extragradient_formula(rule: str, explicit_gamma: float | None, m: int | None) -> None:
    """gamma = lr * (chunk size / global batch) under micro_batch, lr under lr, or the fixed
    value; each chunk extrapolates along its own gradient."""
    model = _mlp()
    batches = _split(*_data(12), [6, 6])
    lr, scale = 0.3, 1.5
    def delta(g: list[Tensor], n: int) -> list[Tensor]:
        gamma = explicit_gamma if explicit_gamma is not None else lr * scale * (n / 12 if rule == "micro_batch" else 1)
        return [-gamma * gi for gi in g]
    ref = _ref_per_chunk(_mlp(), batches, m, delta)
    got, parts = _method_grads("extragradient", model, batches, lr=lr, methods={
        "gamma": explicit_gamma, "gamma_rule": rule, "gamma_scale": scale, "micro_batch_size": m})
    _close(got, ref)
    assert float(parts["loss_extrapolated"]) < float(parts["loss"])  # a descent step on the same batch
    assert float(parts["loss_ratio"]) == pytest.approx(float(parts["loss"]) / float(parts["loss_extrapolated"]))


def test_extragradient_needs_lr_or_gamma() -> None:
    with pytest.raises(RuntimeError, match="lr="):
        _method_grads("extragradient", _mlp(), _split(*_data(4), [4]))


def test_sam_rejects_negative_rho_and_bad_micro_batch_size() -> None:
    with pytest.raises(ConfigError, match="rho"):
        build_method(_cfg("sam", rho=-1.0))
    for name in ("sam", "extragradient"):
        with pytest.raises(ConfigError, match=f"methods.{name}.micro_batch_size.*>= 1 or null"):
            build_method(_cfg(name, micro_batch_size=0))


def test_records_of_earlier_releases_keep_their_meaning() -> None:
    """A saved SAM / extragradient record without the keys added since reads as what it ran
    (the whole local batch, gamma = lr), not as today's defaults; a new config gets the defaults."""
    from dreg_dist.config import config_from_record, load_config

    old = {"method": "extragradient", "methods": {"extragradient": {"gamma": None}}}
    hp = config_from_record(old).method_config
    assert hp.micro_batch_size is None and hp.gamma_rule == "lr"
    hp = config_from_record({"method": "sam", "methods": {"sam": {"rho": 0.1}}}).method_config
    assert hp.micro_batch_size is None and hp.rho == 0.1
    new = load_config(None, ["method=sam"], warn=None).method_config
    assert new.micro_batch_size == 128


# --------------------------------------------------------------------- gradientmix
def test_gradientmix_single_worker_is_plain_gradient() -> None:
    batches = _split(*_data(10), [4, 6])
    got, parts = _method_grads("gradientmix", _mlp(), batches, step=3)
    _close(got, _mean_loss_grad(_mlp(), batches))
    assert float(parts["mix_weight_max"]) == 1.0


def test_mix_weights() -> None:
    a = mix_weights(seed=0, step=4, world_size=4, alpha=1.0, strength=1.0)
    assert a.shape == (4,) and a.sum() == pytest.approx(1.0) and (a >= 0).all()
    np.testing.assert_array_equal(a, mix_weights(0, 4, 4, 1.0, 1.0))  # same on every rank
    assert not np.allclose(a, mix_weights(0, 5, 4, 1.0, 1.0))
    np.testing.assert_allclose(mix_weights(0, 4, 4, 1.0, 0.0), np.full(4, 0.25))
    half = mix_weights(0, 4, 4, 1.0, 0.5)
    np.testing.assert_allclose(half, 0.5 * 0.25 + 0.5 * a)  # linear in the strength
    np.testing.assert_array_equal(mix_weights(0, 4, 1, 1.0, 1.0), [1.0])
    mean = np.mean([mix_weights(0, t, 3, 1.0, 1.0) for t in range(3000)], axis=0)
    np.testing.assert_allclose(mean, np.full(3, 1 / 3), atol=0.02)  # unbiased on average


# --------------------------------------------------------------------- loss scaling
@pytest.mark.parametrize("name", NEW_METHODS)
def test_grad_scaler_scales_only_the_final_gradient(name: str) -> None:
    """With fp16-style loss scaling, .grad holds scale * gradient (the trainer unscales it)
    while the inner local gradients (penalty, SAM/extrapolation step) are unscaled."""
    batches = _split(*_data(8), [4, 4])
    methods = {"gradnorm": {"micro_batch_size": 4, "lam": 0.5}, "fisher": {"micro_batch_size": 4, "lam": 0.5},
               "sam": {"rho": 0.2, "micro_batch_size": 2}, "extragradient": {"micro_batch_size": 2}}.get(name, {})
    plain, _ = _method_grads(name, _mlp(), batches, methods=methods, lr=0.4, step=2)
    model = _mlp()
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    ctx = StepContext(model, model, contextlib.nullcontext, scaler, lr=0.4, step=2)
    build_method(_cfg(name, **methods)).compute_gradients(ctx, batches)
    _close([p.grad / 1024.0 for p in model.parameters()], plain)


# --------------------------------------------------------------------- registry and config
def test_registry_and_config_keys(tmp_path: Path) -> None:
    for name in NEW_METHODS:
        assert name in BUILTIN
    cfg = load_config(None, ["method=sam", "methods.sam.rho=0.1", "methods.extragradient.gamma=0.02",
                             "methods.gradnorm.micro_batch_size=64"])
    assert build_method(cfg).name == "sam"
    assert cfg.method_config.rho == 0.1  # the selected method's section only
    assert build_method(load_config(None, [])).name == "dreg"  # the default method
    with pytest.raises(ConfigError, match="methods.sam.rh"):
        load_config(None, ["methods.sam.rh=0.1"])
    with pytest.raises(ConfigError, match="methods.gradientmix.strength"):
        build_method(_cfg("gradientmix", strength=2.0))


# --------------------------------------------------------------------- end to end
E2E = [
    "--config", str(REPO / "configs" / "quickstart.yaml"),
    "model.arch=cnn_small_gn", "data.name=synthetic", "data.synthetic_train_size=192", "data.val_size=64",
    "data.synthetic_test_size=64", "train.epochs=1", "train.global_batch_size=64", "train.eval_batch_size=64",
    "train.device=cpu", "log.tensorboard=false", "log.every_steps=1", "log.progress=lines", "optim.warmup_epochs=0",
    "methods.gradnorm.micro_batch_size=32", "methods.fisher.micro_batch_size=32",
]
OWN_KEY = {"gradnorm": "penalty", "fisher": "penalty", "sam": "loss_perturbed",
           "extragradient": "loss_extrapolated", "gradientmix": "mix_weight_max"}


@pytest.mark.parametrize("name", NEW_METHODS)
def test_method_trains_end_to_end(tmp_path: Path, name: str) -> None:
    """Two optimizer steps of the real trainer; extragradient needs the trainer to pass ``lr``
    in the StepContext (its default gamma is the current learning rate)."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "SLURM_PROCID", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    script = "import sys\nfrom dreg_dist.train.run import main\nsys.exit(main(sys.argv[1:]))\n"
    run = tmp_path / name
    proc = subprocess.run([sys.executable, "-c", script, "--run-dir", str(run), *E2E, f"method={name}"],
                          capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["method"] == name and summary["global_steps"] == 2
    train = [r for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if r.get("kind") == "train"]
    assert len(train) == 2
    assert all(OWN_KEY[name] in r and np.isfinite(r[OWN_KEY[name]]) for r in train)


def test_penalty_says_once_when_the_micro_batch_is_cut(capsys: pytest.CaptureFixture[str]) -> None:
    batches = _split(*_data(8), [4, 4])  # micro-batches of 4 < m = 6: the penalty's chunks shrink
    for step in range(3):
        _method_grads("gradnorm", _mlp(), batches, methods={"micro_batch_size": 6}, step=step)
    err = capsys.readouterr().err
    assert err.count("warning: methods.gradnorm.micro_batch_size=6 but each worker's micro-batch holds 4") == 3
    method = build_method(_cfg("fisher", micro_batch_size=4))
    method.compute_gradients(_ctx(_mlp(), step=0), batches)
    method.compute_gradients(_ctx(_mlp(), step=1), batches)
    assert capsys.readouterr().err == ""  # m fits: nothing to say
    method = build_method(_cfg("fisher", micro_batch_size=6))
    method.compute_gradients(_ctx(_mlp(), step=0), batches)
    method.compute_gradients(_ctx(_mlp(), step=1), batches)
    assert capsys.readouterr().err.count("warning:") == 1  # once per run, not per step


def test_local_passes_use_local_statistics_under_sync_bn(monkeypatch: pytest.MonkeyPatch) -> None:
    """With train.sync_bn a method's local pass must not communicate: inside
    ``local_norm_statistics`` a SyncBatchNorm computes exactly what a BatchNorm would, even
    where (a process group of 2 is faked here) it would otherwise synchronize."""
    import torch.distributed as dist

    from dreg_dist.methods._util import local_norm_statistics

    torch.manual_seed(0)
    plain = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
    synced = nn.SyncBatchNorm.convert_sync_batchnorm(_copy(plain))
    x = torch.randn(6, 3, 8, 8)
    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    monkeypatch.setattr(dist, "get_world_size", lambda *a, **k: 2)

    def no_communication(*args: object, **kwargs: object) -> None:
        raise AssertionError("a local pass communicated")

    for name in ("all_reduce", "all_gather", "all_gather_into_tensor"):
        monkeypatch.setattr(dist, name, no_communication)
    with pytest.raises(Exception):
        synced(x)  # outside: SyncBatchNorm tries to synchronize
    with local_norm_statistics(synced):
        torch.testing.assert_close(synced(x), plain(x))
    torch.testing.assert_close(synced[1].running_mean, plain[1].running_mean)
    assert "forward" not in vars(synced[1])  # restored
