"""The Method protocol itself: its members, each method's traits (and that they are true), the
refusal of a class written for the protocol before traits, and the generic output choice and
export (which must write what DReg's own export wrote)."""

from __future__ import annotations

import contextlib
import json
import sys
import types
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import Tensor, nn

from dreg_dist import methods
from dreg_dist.dreg import choose_path, write_export
from dreg_dist.methods import Method, StepContext, Traits, build_method, choose_output, export_output, method_class
from dreg_dist.models import Batch, build_model

PROTOCOL = ["name", "Config", "description", "traits",                      # declared
            "check", "prepare_model", "configure_ddp", "loss", "compute_gradients", "after_step", "values",
            "eval_outputs", "export_model"]                                 # hooks
"""The public members of Method, the whole protocol (docs/methods.md lists the same)."""

TRAITS = {
    "vanilla": Traits(),
    "dreg": Traits(section="dreg", outputs=("R", "L")),
    "gradnorm": Traits(compiles=False, needs_sample_index=True, syncs_with_host=True),
    "fisher": Traits(compiles=False, needs_sample_index=True, syncs_with_host=True),
    "sam": Traits(needs_sample_index=True, syncs_with_host=True),
    "extragradient": Traits(needs_sample_index=True, syncs_with_host=True),
    "gradientmix": Traits(replaces_allreduce=True),
}
"""What each built-in method declares (a change to a method's traits is a change to this table)."""

SMALL = {"gradnorm": {"micro_batch_size": 4}, "fisher": {"micro_batch_size": 4}, "sam": {"micro_batch_size": 4},
         "extragradient": {"micro_batch_size": 4, "gamma": 0.1}}
"""Hyperparameters that cut the test's micro-batches of 4 into whole chunks."""


def test_the_protocol_is_the_documented_set_of_members() -> None:
    public = [m for m in vars(Method) if not m.startswith("_")]
    assert sorted(public) == sorted(PROTOCOL), f"Method grew or shrank: {set(public) ^ set(PROTOCOL)}"
    doc = (Path(__file__).resolve().parents[2] / "docs" / "methods.md").read_text()
    assert all(f"`{m}" in doc for m in PROTOCOL)


def test_every_registered_method_declares_the_traits_of_the_table() -> None:
    assert set(TRAITS) == set(methods.BUILTIN)
    for name, expected in TRAITS.items():
        assert method_class(name).traits == expected, name
        assert build_method(name).traits == expected, name  # the defaults keep what the class declares
    mix = method_class("gradientmix")
    assert mix(mix.Config(strength=0.0)).traits.replaces_allreduce is False  # refined by the instance
    assert mix.traits.replaces_allreduce is True


def _step(name: str, positions: list[list[int]], scaler_enabled: bool = False) -> list[Tensor]:
    """The gradients of one step of ``name`` on a tiny CNN (two micro-batches of 4 samples at
    ``positions`` in the global batch), and after_step run."""
    cls = method_class(name)
    method = cls(cls.Config(**SMALL.get(name, {})))
    torch.manual_seed(0)
    model = method.prepare_model(build_model("cnn_tiny", 3))
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(8, 3, 32, 32, generator=g), torch.randint(0, 3, (8,), generator=g)
    batches = [Batch(x[:4], y[:4], positions[0]), Batch(x[4:], y[4:], positions[1])]
    scaler = torch.amp.GradScaler("cpu", enabled=scaler_enabled)
    method.compute_gradients(StepContext(model, model, contextlib.nullcontext, scaler, lr=0.1, step=5), batches)
    method.after_step(model)
    return [p.grad.detach().clone() for p in model.parameters() if p.grad is not None]


@pytest.mark.parametrize("name", sorted(TRAITS))
def test_needs_sample_index_is_true(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A method declared not to read sample positions computes the same step wherever its samples
    sit in the global batch and never asks for their positions; one declared to read them does
    (and Fisher, which seeds its labels by them, changes with them)."""
    from dreg_dist.methods import _util

    asked = []
    real = _util.with_positions
    monkeypatch.setattr(_util, "with_positions", lambda *a, **k: asked.append(1) or real(*a, **k))
    here = _step(name, [[0, 1, 2, 3], [4, 5, 6, 7]])
    assert bool(asked) == method_class(name).traits.needs_sample_index, name
    there = _step(name, [[100, 101, 102, 103], [104, 105, 106, 107]])
    same = all(torch.equal(a, b) for a, b in zip(here, there, strict=True))
    if not method_class(name).traits.needs_sample_index:
        assert same, f"{name} declares needs_sample_index=False but its step depends on the positions"
    if name == "fisher":
        assert not same


_READS = ("item", "tolist", "numpy", "__bool__", "__float__", "__int__")


@pytest.mark.parametrize("name", sorted(TRAITS))
def test_syncs_with_host_is_true(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A step (compute_gradients and after_step, fp16-style loss scaling on) reads tensor values on
    the host exactly when the method declares syncs_with_host. On the CPU nothing syncs, so the reads
    themselves are counted: item(), tolist(), numpy(), bool(), float(), int() of a tensor, except the
    int64 sample positions (host data by construction, never on the device)."""
    reads: list[str] = []
    for attr in _READS:
        real = getattr(torch.Tensor, attr)

        def spy(self: Tensor, *a: Any, _real: Any = real, _attr: str = attr, **k: Any) -> Any:
            if self.dtype != torch.int64:
                reads.append(_attr)
            return _real(self, *a, **k)

        monkeypatch.setattr(torch.Tensor, attr, spy)
    _step(name, [[0, 1, 2, 3], [4, 5, 6, 7]], scaler_enabled=True)
    monkeypatch.undo()
    assert bool(reads) == method_class(name).traits.syncs_with_host, (name, sorted(set(reads)))


@pytest.mark.parametrize("old, replacement", [
    ("supports_compile", "Traits(compiles="), ("outputs", "Traits(outputs="), ("section", "Traits(section="),
    ("replaces_allreduce", "Traits(replaces_allreduce="), ("startup_notes", "check(module)"),
    ("log_values", "values(module, final=False)"), ("summary_values", "values(module, final=True)"),
    ("choose_output", "generic choice"), ("exported_model", "export_model("), ("export", "export_model("),
])
def test_a_class_with_a_retired_member_is_refused_in_one_line(old: str, replacement: str,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    attrs: dict[str, Any] = {"name": "old"}
    attrs[old] = property(lambda self: True) if old == "replaces_allreduce" else (lambda self, *a: None)
    Old = type("Old", (Method,), attrs)
    module = types.ModuleType("old_protocol_module")
    module.Old = Old  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "old_protocol_module", module)
    monkeypatch.setattr(methods, "_registered", {"old": "old_protocol_module:Old"})
    monkeypatch.setattr(methods, "_classes", {})
    for refuse in (lambda: methods.method_class("old"), lambda: Old()):
        with pytest.raises(methods.ConfigError) as err:
            refuse()
        line = str(err.value)
        assert "\n" not in line and f"defines '{old}'" in line and replacement in line, line


@pytest.mark.parametrize("val_acc, requested", [
    ({"R": 0.5, "L": 0.6}, "auto"), ({"R": 0.6, "L": 0.6}, "auto"), ({"R": 0.9, "L": 0.1}, "auto"),
    ({"R": 0.9, "L": 0.1}, "L"), ({}, "R"), ({"R": 0.5}, "auto"), ({"R": 0.5, "L": 0.4}, "both"),
    ({"R": float("nan"), "L": 0.4}, "auto"),
])
def test_the_generic_choice_is_dregs(val_acc: dict[str, float], requested: str) -> None:
    dreg = build_method("dreg")
    try:
        expected: Any = choose_path(val_acc, requested)  # type: ignore[arg-type]
    except ValueError as err:
        with pytest.raises(ValueError) as got:
            choose_output(dreg, val_acc, requested)
        assert str(got.value) == str(err)
        return
    assert choose_output(dreg, val_acc, requested) == expected


def test_a_single_output_method_chooses_none_and_refuses_a_path() -> None:
    vanilla = build_method("vanilla")
    assert choose_output(vanilla, {"model": 0.3}) is None and choose_output(vanilla, {}, "model") is None
    with pytest.raises(ValueError, match="method vanilla has one output \\('model'\\); got path 'R'"):
        choose_output(vanilla, {"model": 0.3}, "R")


def test_the_generic_export_writes_what_dregs_export_wrote(tmp_path: Path) -> None:
    dreg = build_method("dreg")
    torch.manual_seed(0)
    dual = dreg.prepare_model(build_model("cnn_tiny", 10))
    val_acc = {"R": 0.40, "L": 0.55}
    meta = dict(arch="cnn_tiny", num_classes=10, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25),
                input_shape=(3, 32, 32), extra_meta={"best_epoch": 3, "method": "dreg", "run_dir": "runs/x"})
    output = choose_output(dreg, val_acc)
    got = export_output(dreg, dual, tmp_path / "generic", val_acc=val_acc, output=output, **meta)
    want = write_export(dual, tmp_path / "dreg", val_acc=val_acc, path=output, **meta)  # type: ignore[arg-type]
    assert got == want and got["path"] == "L" and got["dreg_layer"] == "conv4" and got["dreg_norm"] == "per_path"
    assert (tmp_path / "generic" / "meta.json").read_bytes() == (tmp_path / "dreg" / "meta.json").read_bytes()
    a, b = (torch.load(tmp_path / d / "model_state.pt", weights_only=True) for d in ("generic", "dreg"))
    assert list(a) == list(b) and all(torch.equal(a[k], b[k]) for k in b)

    vanilla = build_method("vanilla")
    plain = export_output(vanilla, build_model("cnn_tiny", 10), tmp_path / "plain", val_acc={"model": 0.5},
                          output=choose_output(vanilla, {"model": 0.5}), **meta)
    on_disk = json.loads((tmp_path / "plain" / "meta.json").read_text())
    assert plain == on_disk and on_disk["path"] is None and on_disk["dreg_layer"] is None
    assert list(on_disk)[-3:] == ["best_epoch", "method", "run_dir"] and "dreg_norm" not in on_disk


def test_values_and_check_are_the_one_hook_each() -> None:
    dreg = build_method("dreg")
    dual = dreg.prepare_model(build_model("cnn_tiny", 10))
    logged, final = dreg.values(dual, final=False), dreg.values(dual, final=True)
    assert "branch_distance" in logged and set(final) == set(logged) | {"contrast"}
    assert build_method("sam").values(nn.Linear(2, 2), final=True) == {}
    assert dreg.check() == [] and dreg.check(dual) == []  # the projected form: nothing to warn about


def test_a_host_syncing_method_under_the_device_guard_is_said_once(tmp_path: Path) -> None:
    from ..conftest import TINY, assert_ok, launch

    said = "reads device values on the host in every step"
    sam = launch(1, "configs/quickstart.yaml", tmp_path / "sam",
                 [*TINY, "method=sam", "train.epochs=1", "train.step_guard=device", "train.stop_after_steps=1"])
    assert_ok(sam)
    assert sam.stdout.count(said) == 1
    vanilla = launch(1, "configs/quickstart.yaml", tmp_path / "vanilla",
                     [*TINY, "method=vanilla", "train.epochs=1", "train.step_guard=device", "train.stop_after_steps=1"])
    assert_ok(vanilla)
    assert said not in vanilla.stdout
