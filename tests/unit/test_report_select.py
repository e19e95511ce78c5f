"""Sweep grids and report numbers: LR selection on validation only, epochs-to-target,
grid expansion (irrelevant DReg keys dropped), cell names. No training: run folders are
planted with the files the trainer writes (config.yaml, metrics.jsonl, summary.json)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Optional, Sequence

import pytest
import yaml

from dreg_dist.config import config_to_dict, load_config
from dreg_dist.report.analysis import analyse
from dreg_dist.report.compare import make_row
from dreg_dist.report.runs import load_runs
from dreg_dist.report.select import LrResult, epochs_to_reach, select_lr
from dreg_dist.sweep.grid import MAX_NAME_LEN, Grid, GridError, cell_names, expand_grid, load_grid, safe_name
from dreg_dist.sweep.runner import disk_status
from dreg_dist.report.compare import rows as rows_of

from ..conftest import launch_script

REPO = Path(__file__).resolve().parents[2]
BASE = "configs/cifar10_cnn_small.yaml"
pytestmark = pytest.mark.usefixtures("resolver_in_process")  # one resolver subprocess per grid cost 5-40 s a test


def plant_run(root: Path, name: str, *, method: str, batch: int = 512, seed: int = 0, lr: float = 0.1,
              lam: float = 0.1, curve: Sequence[float], test_acc: float, finished: bool = True,
              extra: Sequence[str] = (), wall: float = 100.0, workers: Optional[int] = None) -> Path:
    """A run folder as the trainer leaves it; ``curve`` = validation accuracy after each epoch;
    ``workers``: the world size its start record and summary.json name (None: neither does)."""
    run = root / name
    run.mkdir(parents=True)
    cfg = load_config(REPO / BASE, [f"method={method}", f"train.global_batch_size={batch}", f"train.seed={seed}",
                                    f"optim.lr={lr}", f"dreg.lam={lam}", f"train.epochs={len(curve)}",
                                    f"run_dir={run}", *extra])
    (run / "config.yaml").write_text(yaml.safe_dump(config_to_dict(cfg), sort_keys=False))
    lines = [{"kind": "start", "time": 0.0, **({"world_size": workers} if workers else {})}]
    for epoch, acc in enumerate(curve, start=1):
        lines.append({"kind": "train", "step": epoch * 10, "epoch": float(epoch), "loss": 2.0 / epoch,
                      "lr": lr, "images_per_sec": 1000.0,
                      **({"branch_distance_rel": 0.01 * epoch} if method == "dreg" else {})})
        if method == "dreg":  # path L a little worse: the curve is the better path
            lines.append({"kind": "val", "step": epoch * 10, "epoch": epoch, "acc_R": acc, "acc_L": acc - 0.01,
                          "loss_R": 1.0, "loss_L": 1.0, "best_acc": max(curve[:epoch])})
        else:
            lines.append({"kind": "val", "step": epoch * 10, "epoch": epoch, "acc": acc, "loss": 1.0,
                          "best_acc": max(curve[:epoch])})
    (run / "metrics.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    if finished:
        best = max(curve)
        val_acc = {"R": best, "L": best - 0.01} if method == "dreg" else {"model": best}
        summary = {"status": "finished", "method": method, "global_batch_size": batch, "epochs": len(curve),
                   "best": {"epoch": curve.index(best) + 1, "path": "R" if method == "dreg" else None,
                            "val_acc": val_acc},
                   "test": {"acc": test_acc}, "images_per_sec": 1000.0, "wall_time_s": wall,
                   **({"world_size": workers} if workers else {})}
        if method == "dreg":
            summary["final_branch_stats"] = {"branch_distance": 2.5, "branch_distance_rel": 0.1}
        (run / "summary.json").write_text(json.dumps(summary))
    return run


# ------------------------------------------------------------------ learning-rate selection
def test_select_lr_pure_function_ignores_test_accuracy() -> None:
    results = [
        LrResult("vanilla", 0.05, val_accs=(0.79, 0.81), test_accs=(0.95, 0.95)),  # best test, worse val
        LrResult("vanilla", 0.1, val_accs=(0.84, 0.86), test_accs=(0.60, 0.60)),   # best val
        LrResult("vanilla", 0.2, val_accs=(), test_accs=(0.99,)),                   # no validation: never chosen
        LrResult("dreg", 0.1, val_accs=(0.70,), test_accs=(0.10,)),
        LrResult("dreg", 0.05, val_accs=(0.70,), test_accs=(0.90,)),                # tie on val: smaller lr
    ]
    chosen = select_lr(results)
    assert chosen["vanilla"].lr == 0.1
    assert chosen["dreg"].lr == 0.05
    assert chosen["vanilla"].val_acc == pytest.approx(0.85)


def test_report_selects_each_methods_lr_on_validation_only(tmp_path: Path) -> None:
    root = tmp_path / "runs" / "lrgrid"
    # (method, lr) -> (best val acc per seed, test acc per seed). For both methods the
    # learning rate with the best test accuracy is NOT the one with the best validation accuracy.
    plan = {
        ("vanilla", 0.05): ((0.70, 0.72), (0.95, 0.96)),
        ("vanilla", 0.1): ((0.80, 0.82), (0.60, 0.61)),
        ("vanilla", 0.2): ((0.75, 0.77), (0.70, 0.71)),
        ("dreg", 0.025): ((0.78, 0.80), (0.97, 0.98)),
        ("dreg", 0.05): ((0.86, 0.84), (0.50, 0.51)),
    }
    for (method, lr), (vals, tests) in plan.items():
        for seed, (best, test) in enumerate(zip(vals, tests)):
            plant_run(root, f"{method}_lr{lr}_seed{seed}", method=method, lr=lr, seed=seed,
                      curve=[best / 2, best, best - 0.05], test_acc=test)
    analysis = analyse(load_runs(root))
    assert analysis.lr_varies
    (setup,) = analysis.setups
    chosen = {g.method: g.lr for g in setup.selected}
    assert chosen == {"vanilla": 0.1, "dreg": 0.05}
    rows = {r.group.method: r for r in rows_of(setup, 512)}
    assert rows["vanilla"].best_val[0] == pytest.approx(0.81)
    assert rows["dreg"].test[0] == pytest.approx(0.505)  # reported at the val-selected lr, however low

    pytest.importorskip("matplotlib")
    from dreg_dist.report.markdown import write_report

    out = tmp_path / "report"
    write_report(root, out, say=lambda _: None)
    text = (out / "report.md").read_text()
    assert "**0.1: 81.00 (2 seeds)**" in text and "**0.05: 85.00 (2 seeds)**" in text  # stated selection
    assert "| vanilla | 512 | 0.05: 71.00 (2 seeds); **0.1: 81.00 (2 seeds)**; 0.2: 76.00 (2 seeds) | 0.1 | 0, 1 |" in text
    assert "| 0.05 |" in text and "0.05 (highest tried)" not in text  # dreg tried 2 rates: no edge flag
    assert re.search(r"^\| vanilla \| 0\.1 \| 0, 1 \| 81\.00 ± 1\.41 \|", text, re.M)
    assert re.search(r"^\| dreg \| 0\.05 \| 0, 1 \| 85\.00 ± 1\.41 \|", text, re.M)
    for fig in ("lr_sensitivity", "dreg_branch_distance_rel_bs512"):
        assert f"](figures/{fig}.png)" in text
        assert (out / "figures" / f"{fig}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    (dreg_05,) = [g for g in analysis.setups[0].groups if g.method == "dreg" and g.lr == 0.05]
    assert [p[1] for p in dreg_05.train_curve("branch_distance_rel")] == pytest.approx([0.01, 0.02, 0.03])


def test_report_flags_a_selection_at_the_edge_of_the_grid(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    from dreg_dist.report.markdown import write_report

    root = tmp_path / "edge"
    for lr, acc in ((0.05, 0.8), (0.1, 0.7), (0.2, 0.6)):
        plant_run(root, f"v{lr}", method="vanilla", lr=lr, curve=[acc], test_acc=0.5)
    write_report(root, tmp_path / "rep", say=lambda _: None)
    assert "| 0.05 (lowest tried) | 0 |" in (tmp_path / "rep" / "report.md").read_text()


def test_a_diverged_run_is_named_so(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    from dreg_dist.report.markdown import write_report

    root = tmp_path / "div"
    plant_run(root, "v", method="vanilla", curve=[0.5, 0.6], test_acc=0.5)
    run = plant_run(root, "d", method="dreg", curve=[0.4, 0.45], test_acc=0.5, finished=False)
    with open(run / "metrics.jsonl", "a") as f:  # what the trainer logs before stopping on it
        f.write('{"kind": "train", "step": 25, "epoch": 2.5, "loss": -1e37, "contrast": Infinity}\n')
    (loaded,) = [r for r in load_runs(root) if r.name == "d"]
    assert loaded.diverged_at == 25 and loaded.status == "diverged at step 25"
    write_report(root, tmp_path / "rep", say=lambda _: None)
    text = (tmp_path / "rep" / "report.md").read_text()
    assert re.search(r"^\| dreg \(diverged: 1/1 seeds\) \| 0\.1 \| 0 \| 45\.00 \|", text, re.M)
    assert "| diverged at step 25 |" in text
    # The trainer's own record names the step when no logged value shows it (state check).
    other = plant_run(root, "d2", method="dreg", lr=0.2, curve=[0.3], test_acc=0.5, finished=False)
    with open(other / "metrics.jsonl", "a") as f:
        f.write('{"kind": "diverged", "step": 12, "epoch": 1, "reason": "model or optimizer state is not finite"}\n')
    (loaded,) = [r for r in load_runs(root) if r.name == "d2"]
    assert loaded.status == "diverged at step 12"


def test_select_lr_uses_only_seeds_every_lr_has() -> None:
    # lr 0.1 was rerun with seed 1 after being selected on seed 0; its seed 1 is worse than
    # lr 0.05's seed 0, but the choice must stay what seed 0 said.
    results = [
        LrResult("dreg", 0.1, val_accs=(0.80, 0.60), seeds=(0, 1)),
        LrResult("dreg", 0.05, val_accs=(0.75,), seeds=(0,)),
        LrResult("vanilla", 0.1, val_accs=(0.70,), seeds=(1,)),   # no seed in common: all seeds count
        LrResult("vanilla", 0.2, val_accs=(0.72,), seeds=(0,)),
    ]
    chosen = select_lr(results)
    assert chosen["dreg"].lr == 0.1 and chosen["dreg"].val_acc == pytest.approx(0.70)
    assert chosen["vanilla"].lr == 0.2


def test_seed_grid_reruns_only_the_selected_lrs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = tmp_path / "runs" / "stage1"
    grid = {"name": "stage1", "config": BASE, "overrides": ["train.epochs=3"],
            "axes": {"method": ["vanilla", "dreg"], "dreg.lam": [0.1, 0.01], "train.seed": [0]},
            "lr_grid": [0.05, 0.1], "exclude": []}
    best = {("vanilla", None, 0.05): 0.70, ("vanilla", None, 0.1): 0.80, ("dreg", 0.1, 0.05): 0.85,
            ("dreg", 0.1, 0.1): 0.60, ("dreg", 0.01, 0.05): 0.50, ("dreg", 0.01, 0.1): 0.55}
    for (method, lam, lr), acc in best.items():
        plant_run(root, f"{method}_{lam}_{lr}", method=method, lam=lam or 0.1, lr=lr, curve=[acc / 2, acc, acc],
                  test_acc=1.0 - acc)  # test accuracy inverted: it must play no part
    (root / "sweep.json").write_text(json.dumps({"name": "stage1", "grid": grid, "command": ["launch/sweep.py"]}))
    out = tmp_path / "stage2.yaml"
    report = _cli("report.py")
    assert report([str(root), "--seed-grid", str(out), "--seeds", "1,2"]) == 0
    cells = expand_grid(load_grid(out))
    assert sorted((c.method, c.values.get("dreg.lam"), c.values["optim.lr"], c.values["train.seed"]) for c in cells) == [
        ("dreg", 0.01, 0.1, 1), ("dreg", 0.01, 0.1, 2), ("dreg", 0.1, 0.05, 1), ("dreg", 0.1, 0.05, 2),
        ("vanilla", None, 0.1, 1), ("vanilla", None, 0.1, 2)]
    assert "dreg (lam=0.01) batch 512: lr 0.1" in out.read_text()
    assert report([str(root), "--seed-grid", str(out), "--seeds", "0"]) == 2
    assert "already ran" in capsys.readouterr().err


def test_more_seeds_only_where_the_interval_is_wider_than_a_third_of_the_gap(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """--seed-grid --wide-only: seeds 3, 4 for the first sweep's selections whose seed-paired
    validation interval against the baseline is over a third of the gap (vanilla at 512 minus
    vanilla at 4096, found in the folders named with --against), and for the baseline beside them."""
    def sweep(name: str, batch: int, methods: dict[str, Sequence[float]]) -> Path:
        root = tmp_path / "runs" / name
        grid = {"name": name, "config": BASE, "overrides": ["train.epochs=2", f"train.global_batch_size={batch}"],
                "axes": {"method": sorted(methods), "train.seed": [0, 1, 2]}, "lr_grid": [0.1], "exclude": []}
        for method, accs in methods.items():
            for seed, acc in enumerate(accs):
                plant_run(root, f"{method}_s{seed}", method=method, batch=batch, seed=seed, curve=[acc / 2, acc],
                          test_acc=0.5)  # test accuracy plays no part in how many seeds a selection gets
        (root / "sweep.json").write_text(json.dumps({"name": name, "grid": grid, "command": ["launch/sweep.py"]}))
        return root

    ref = sweep("ref", 512, {"vanilla": [0.80, 0.80, 0.80]})  # gap 0.10, a third of it 0.033
    big = sweep("big", 4096, {"vanilla": [0.70, 0.71, 0.69], "dreg": [0.78, 0.66, 0.70]})  # +-0.16: wide
    narrow = sweep("narrow", 4096, {"sam": [0.72, 0.73, 0.71]})  # +0.02 on every seed: +-0
    out = tmp_path / "seeds34.yaml"
    report = _cli("report.py")
    assert report([str(big), "--against", str(ref), str(narrow), "--seed-grid", str(out), "--seeds", "3,4",
                   "--wide-only"]) == 0
    cells = sorted((c.method, c.values["train.seed"]) for c in expand_grid(load_grid(out)))
    assert cells == [("dreg", 3), ("dreg", 4), ("vanilla", 3), ("vanilla", 4)]
    text = out.read_text()
    assert "the baseline of a wide selection" in text and "over 0.33 of the gap of 10.00" in text
    # SAM's sweep alone has nothing wide: its baseline lives in the other sweep and is not rerun from here.
    assert report([str(narrow), "--against", str(ref), str(big), "--seed-grid", str(out), "--seeds", "3,4",
                   "--wide-only"]) == 3
    assert "no more seeds needed" in capsys.readouterr().err
    assert report([str(big), "--edge-grid", str(out), "--wide-only"]) == 2
    assert "--wide-only goes with --seed-grid" in capsys.readouterr().err
    # Without the reference's folder nothing can be judged: an error, not "no more seeds needed".
    assert report([str(big), "--seed-grid", str(out), "--seeds", "3,4", "--wide-only"]) == 2
    assert "name the folders of the baseline and the reference with --against" in capsys.readouterr().err


def test_a_methods_knob_is_tuned_with_the_learning_rate(tmp_path: Path) -> None:
    """A grid with ``tune: [dreg.lam]``: the report selects (lr, lambda) jointly on validation,
    never on test; the knob is not a separate variant; the seed follow-up keeps the chosen lambda
    and the ``tune`` list. Without ``tune`` each lambda is a variant of its own."""
    root = tmp_path / "runs" / "knob"
    grid = {"name": "knob", "config": BASE, "overrides": ["train.epochs=3"],
            "axes": {"method": ["vanilla", "dreg"], "dreg.lam": [0.1, 0.01], "train.seed": [0]},
            "lr_grid": [0.05, 0.1], "exclude": [], "tune": ["dreg.lam"]}
    best = {("vanilla", None, 0.05): 0.70, ("vanilla", None, 0.1): 0.80, ("dreg", 0.1, 0.05): 0.62,
            ("dreg", 0.1, 0.1): 0.60, ("dreg", 0.01, 0.05): 0.50, ("dreg", 0.01, 0.1): 0.75}
    for (method, lam, lr), acc in best.items():
        plant_run(root, f"{method}_{lam}_{lr}", method=method, lam=lam or 0.1, lr=lr, curve=[acc / 2, acc, acc],
                  test_acc=1.0 - acc)  # test accuracy inverted: it must play no part
    (root / "sweep.json").write_text(json.dumps({"name": "knob", "grid": grid, "command": ["launch/sweep.py"]}))
    from dreg_dist.report.runs import tuned_keys

    assert tuned_keys([root]) == ["dreg.lam"]
    analysis = analyse(load_runs(root), tuned=tuned_keys([root]))
    assert analysis.roles["tuned"] == ["dreg.lam"] and "dreg.lam" not in analysis.roles["variant"]
    (setup,) = analysis.setups
    chosen = {g.method: (g.lr, dict(g.tuned).get("dreg.lam")) for g in setup.selected}
    assert chosen == {"vanilla": (0.1, None), "dreg": (0.1, 0.01)}
    assert [r.group.label for r in rows_of(setup, 512)] == ["vanilla", "dreg (lam=0.01)"]
    separate = analyse(load_runs(root))  # no tune: two variants, each at its own lr
    assert sorted(g.label for g in separate.setups[0].selected) == ["dreg (lam=0.01)", "dreg (lam=0.1)", "vanilla"]

    out = tmp_path / "seeds.yaml"
    assert _cli("report.py")([str(root), "--seed-grid", str(out), "--seeds", "1"]) == 0
    follow = load_grid(out)
    assert follow.tune == ["dreg.lam"]
    assert sorted((c.method, c.values.get("dreg.lam"), c.values["optim.lr"]) for c in expand_grid(follow)) == [
        ("dreg", 0.01, 0.1), ("vanilla", None, 0.1)]
    pytest.importorskip("matplotlib")
    from dreg_dist.report.markdown import write_report

    text = write_report([root], tmp_path / "out", say=lambda _: None, figures=False).read_text()
    assert "**0.1 (lam=0.01): 75.00**" in text and "| 0.1 (lam=0.01) |" in text
    # The signals table names each run's tuned knob too: its two lambdas are not one "variant".
    assert "| `dreg_0.01_0.1` | lam=0.01 | 0.1 | 0 |" in text and "| `dreg_0.1_0.1` | lam=0.1 | 0.1 | 0 |" in text


def test_a_knob_value_the_first_grid_excluded_can_be_selected_and_seeded(tmp_path: Path) -> None:
    """The study's first grid excludes SAM's second rho, which a later folder runs at SAM's rate;
    when that value wins, the seed follow-up must run it, not drop it through the old exclude."""
    runs = tmp_path / "runs"
    grid = {"name": "first", "config": BASE, "overrides": ["train.epochs=3"],
            "axes": {"method": ["vanilla", "sam"], "methods.sam.rho": [0.02, 0.05], "train.seed": [0]},
            "lr_grid": [0.1], "exclude": [{"method": "sam", "methods.sam.rho": 0.02}], "tune": ["methods.sam.rho"]}
    for folder, method, rho, acc in (("first", "vanilla", None, 0.70), ("first", "sam", 0.05, 0.72),
                                     ("knob", "sam", 0.02, 0.76)):
        plant_run(runs / folder, f"{method}_{rho}", method=method, lr=0.1, curve=[acc / 2, acc, acc], test_acc=0.5,
                  extra=[f"methods.sam.rho={rho}"] if rho else [])
        (runs / folder / "sweep.json").write_text(json.dumps({"name": folder, "grid": grid, "command": []}))
    out = tmp_path / "seeds.yaml"
    assert _cli("report.py")([str(runs / "first"), str(runs / "knob"), "--seed-grid", str(out), "--seeds", "1"]) == 0
    cells = {(c.method, c.values.get("methods.sam.rho")) for c in expand_grid(load_grid(out))}
    assert cells == {("vanilla", None), ("sam", 0.02)}


def test_an_optimizer_knob_is_tuned_with_the_learning_rate(tmp_path: Path) -> None:
    """``tune: [optim.warmup_epochs]`` (LARS's warmup): selected with the rate on validation, in
    the same setup as plain SGD; without ``tune`` a second warmup would split off a setup of its
    own with no baseline in it."""
    root = tmp_path / "runs" / "warm"
    grid = {"name": "warm", "config": BASE, "overrides": ["train.epochs=3", "method=vanilla"],
            "axes": {"optim.name": ["sgd", "lars"], "optim.warmup_epochs": [2, 5]}, "lr_grid": [0.1, 0.5],
            "exclude": [{"optim.name": "sgd", "optim.warmup_epochs": 5}], "tune": ["optim.warmup_epochs"]}
    best = {("sgd", 2, 0.1): 0.70, ("sgd", 2, 0.5): 0.60, ("lars", 2, 0.1): 0.55, ("lars", 2, 0.5): 0.72,
            ("lars", 5, 0.1): 0.50, ("lars", 5, 0.5): 0.78}
    for (opt, warmup, lr), acc in best.items():
        plant_run(root, f"{opt}_{warmup}_{lr}", method="vanilla", lr=lr, curve=[acc / 2, acc, acc],
                  test_acc=1.0 - acc, extra=[f"optim.name={opt}", f"optim.warmup_epochs={warmup}"])
    # LAMB ran only at warmup 5, which is not what most runs used: its label must say so
    plant_run(root, "lamb_5_0.5", method="vanilla", lr=0.5, curve=[0.3, 0.6, 0.6], test_acc=0.4,
              extra=["optim.name=lamb", "optim.warmup_epochs=5"])
    (root / "sweep.json").write_text(json.dumps({"name": "warm", "grid": grid, "command": ["launch/sweep.py"]}))
    assert Grid.from_dict(grid).tune == ["optim.warmup_epochs"]
    from dreg_dist.report.runs import tuned_keys

    analysis = analyse(load_runs(root), tuned=tuned_keys([root]))
    assert analysis.roles["tuned"] == ["optim.warmup_epochs"] and analysis.roles["setup"] == []
    (setup,) = analysis.setups
    chosen = {g.label: (g.lr, dict(g.tuned).get("optim.warmup_epochs")) for g in setup.selected}
    assert chosen == {"vanilla": (0.1, None), "vanilla (optimizer=lars, warmup=5.0)": (0.5, 5.0),
                      "vanilla (optimizer=lamb, warmup=5.0)": (0.5, 5.0)}
    assert len(analyse(load_runs(root)).setups) == 2  # untuned: warmup 5 is a setup of its own
    with pytest.raises(GridError, match="not an optimizer knob"):
        Grid.from_dict({**grid, "axes": {**grid["axes"], "optim.eps": [1e-6, 1e-8]}, "tune": ["optim.eps"]})


def test_ghost_batch_norm_is_a_variant_of_vanilla_in_the_same_setup(tmp_path: Path) -> None:
    """train.bn_group_size is a way to train vanilla: its runs sit in the batch's table next to
    plain vanilla (compared with the same baseline), and the figures give them a panel of their own."""
    root = tmp_path / "runs" / "gbn"
    plant_run(root, "ref", method="vanilla", batch=512, curve=[0.5, 0.8], test_acc=0.8)
    plant_run(root, "plain", method="vanilla", batch=4096, curve=[0.4, 0.7], test_acc=0.7)
    for group, acc in ((32, 0.72), (128, 0.74)):
        plant_run(root, f"gbn{group}", method="vanilla", batch=4096, curve=[0.4, acc], test_acc=acc,
                  extra=[f"train.bn_group_size={group}"])
    analysis = analyse(load_runs(root))
    (setup,) = analysis.setups
    assert analysis.roles["variant"] == ["train.bn_group_size"]
    assert [r.group.label for r in rows_of(setup, 4096)] == ["vanilla", "vanilla (BN group=32)", "vanilla (BN group=128)"]
    from dreg_dist.report.panels import family_panels

    panels = {name: [g.label for g in members] for name, batch, _, members in family_panels(setup.selected)
              if batch == 4096}
    assert panels == {"vanilla, BN group": ["vanilla (BN group=32)", "vanilla (BN group=128)"]}


def test_a_key_its_form_makes_moot_is_not_a_variant(tmp_path: Path) -> None:
    """dreg.radius matters only for the projected form: relative runs that differ in it alone are
    one variant (its label without the radius); projected runs at two radii are two."""
    root = tmp_path / "runs" / "moot"
    for name, form, radius, seed in (("rel_a", "relative", 0.5, 0), ("rel_b", "relative", 1.0, 1),
                                     ("proj_a", "projected", 0.5, 0), ("proj_b", "projected", 1.0, 0)):
        plant_run(root, name, method="dreg", seed=seed, curve=[0.5, 0.6], test_acc=0.6,
                  extra=[f"dreg.form={form}", f"dreg.radius={radius}"])
    (setup,) = analyse(load_runs(root)).setups
    labels = sorted(g.label for g in setup.groups)
    assert labels == ["dreg (form=projected, r=0.5)", "dreg (form=projected, r=1.0)", "dreg (form=relative)"]
    assert next(g for g in setup.groups if g.label == "dreg (form=relative)").seeds == [0, 1]


def test_tune_must_name_a_method_axis() -> None:
    base = {"name": "g", "config": BASE, "axes": {"method": ["sam"], "methods.sam.rho": [0.05, 0.1],
                                                  "optim.nesterov": [True]}}
    assert Grid.from_dict({**base, "tune": ["methods.sam.rho"]}).tune == ["methods.sam.rho"]
    with pytest.raises(GridError, match="not an axis"):
        Grid.from_dict({**base, "tune": ["methods.sam.micro_batch_size"]})
    with pytest.raises(GridError, match="no method owns"):
        Grid.from_dict({**base, "tune": ["optim.nesterov"]})


def test_transfer_grid_runs_each_selection_at_another_batch(tmp_path: Path) -> None:
    """Learning-rate transfer: the rate selected at 512 runs at 1024 (same per-256 value, so
    the linear rule doubles the peak), micro-batch kept, new seeds; axis values of forms that
    have not run yet still single out the right cells."""
    root = tmp_path / "runs" / "stage1"
    grid = {"name": "stage1", "config": BASE, "overrides": ["train.epochs=3", "train.global_batch_size=512"],
            "axes": {"method": ["vanilla", "dreg"], "dreg.form": ["relative", "literal"]},
            "lr_grid": [0.05, 0.1], "exclude": []}
    for method, lr, acc in (("vanilla", 0.05, 0.7), ("vanilla", 0.1, 0.8), ("dreg", 0.05, 0.85), ("dreg", 0.1, 0.6)):
        plant_run(root, f"{method}_{lr}", method=method, lr=lr, curve=[acc / 2, acc], test_acc=0.5,
                  extra=["dreg.form=relative"] if method == "dreg" else [])
    (root / "sweep.json").write_text(json.dumps({"name": "stage1", "grid": grid, "command": ["launch/sweep.py"]}))
    out = tmp_path / "transfer.yaml"
    report = _cli("report.py")
    assert report([str(root), "--transfer-grid", str(out), "--batch", "1024", "--seeds", "0,1"]) == 0
    loaded = load_grid(out)
    assert "train.global_batch_size=1024" in loaded.overrides and "train.accumulation_steps=2" in loaded.overrides
    cells = expand_grid(loaded)
    assert sorted((c.method, c.values.get("dreg.form"), c.values["optim.lr"], c.values["train.seed"]) for c in cells) == [
        ("dreg", "relative", 0.05, 0), ("dreg", "relative", 0.05, 1), ("vanilla", None, 0.1, 0), ("vanilla", None, 0.1, 1)]
    assert report([str(root), "--transfer-grid", str(out)]) == 2  # --batch is required


def test_edge_grid_extends_only_selections_at_the_edge(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = tmp_path / "runs" / "stage1"
    grid = {"name": "stage1", "config": BASE, "overrides": ["train.epochs=3"],
            "axes": {"method": ["vanilla", "dreg"], "dreg.lam": [0.1, 0.01], "train.seed": [0]},
            "lr_grid": [0.025, 0.05, 0.1], "exclude": [{"method": "vanilla", "optim.lr": 0.025}]}
    # vanilla (0.05, 0.1) best at its highest; dreg lam 0.1 best at its lowest; lam 0.01 inside.
    best = {("vanilla", None): (0.6, 0.7), ("dreg", 0.1): (0.8, 0.7, 0.6), ("dreg", 0.01): (0.6, 0.8, 0.7)}
    for (method, lam), accs in best.items():
        lrs = [0.05, 0.1] if method == "vanilla" else [0.025, 0.05, 0.1]
        for lr, acc in zip(lrs, accs):
            plant_run(root, f"{method}_{lam}_{lr}", method=method, lam=lam or 0.1, lr=lr, curve=[acc], test_acc=0.5)
    (root / "sweep.json").write_text(json.dumps({"name": "stage1", "grid": grid}))
    out = tmp_path / "edge.yaml"
    report = _cli("report.py")
    assert report([str(root), "--edge-grid", str(out)]) == 0
    cells = expand_grid(load_grid(out))
    assert sorted((c.method, c.values.get("dreg.lam"), c.values["optim.lr"], c.values["train.seed"]) for c in cells) == [
        ("dreg", 0.1, 0.0125, 0), ("vanilla", None, 0.2, 0)]
    assert "adds 0.0125" in out.read_text()
    for lr, acc in ((0.0125, 0.7), (0.2, 0.65)):  # run them: now both selections are inside
        method, lam = ("dreg", 0.1) if lr == 0.0125 else ("vanilla", None)
        plant_run(tmp_path / "runs" / "edge", f"{method}_{lr}", method=method, lam=lam or 0.1, lr=lr, curve=[acc],
                  test_acc=0.5)
    assert report([str(root), str(tmp_path / "runs" / "edge"), "--edge-grid", str(out)]) == 3
    assert "nothing to extend" in capsys.readouterr().err


def test_batch_bound_key_and_several_sweeps_in_one_report(tmp_path: Path) -> None:
    # accumulation set per batch size (micro-batch 256 at both) is part of the batch size,
    # not a separate setup; a second sweep folder's runs join the first's groups.
    a, b = tmp_path / "runs" / "a", tmp_path / "runs" / "b"
    for root, seed in ((a, 0), (b, 1)):
        for batch, acc in ((512, 2), (1024, 4)):
            plant_run(root, f"v{batch}_s{seed}", method="vanilla", batch=batch, seed=seed, curve=[0.5, 0.6],
                      test_acc=0.5, extra=[f"train.accumulation_steps={acc}"])
    analysis = analyse(load_runs(a) + load_runs(b))
    assert analysis.roles["batch"] == ["train.accumulation_steps", "train.global_batch_size"]
    assert analysis.roles["setup"] == []
    (setup,) = analysis.setups
    assert [len(r.group.runs) for b_ in (512, 1024) for r in rows_of(setup, b_)] == [2, 2]
    pytest.importorskip("matplotlib")
    from dreg_dist.report.markdown import write_report

    write_report([a, b], tmp_path / "rep", say=lambda _: None)
    text = (tmp_path / "rep" / "report.md").read_text()
    assert "## Batch size 1024 (accumulation=4)" in text
    assert "4 run(s) with validation results" in text


# ------------------------------------------------------------------ epochs to 95% / 99%
def test_epochs_to_reach_hand_made_curve() -> None:
    curve = [(3, 0.90), (1, 0.50), (2, 0.80), (4, 0.95), (5, 0.93)]  # unsorted on purpose
    assert epochs_to_reach(curve, 0.95 * 0.95) == 4   # 0.9025: epoch 3 (0.90) is just short
    assert epochs_to_reach(curve, 0.80) == 2          # reaching the target exactly counts
    assert epochs_to_reach(curve, 0.96) is None
    assert epochs_to_reach([], 0.1) is None


def test_table_epochs_to_target_and_speedup(tmp_path: Path) -> None:
    root = tmp_path / "runs" / "speed"
    # vanilla best 0.80 (seed 0) and 0.60 (seed 1); targets per seed: 95% -> 0.76 / 0.57, 99% -> 0.792 / 0.594
    plant_run(root, "v0", method="vanilla", seed=0, curve=[0.40, 0.70, 0.77, 0.80, 0.79, 0.80], test_acc=0.5)
    plant_run(root, "v1", method="vanilla", seed=1, curve=[0.30, 0.50, 0.58, 0.59, 0.60, 0.60], test_acc=0.5)
    plant_run(root, "d0", method="dreg", seed=0, curve=[0.60, 0.77, 0.80, 0.81, 0.81, 0.81], test_acc=0.5)
    plant_run(root, "d1", method="dreg", seed=1, curve=[0.58, 0.595, 0.61, 0.62, 0.62, 0.62], test_acc=0.5)
    (setup,) = analyse(load_runs(root)).setups
    rows = {r.group.method: r for r in rows_of(setup, 512)}
    van, dreg = rows["vanilla"], rows["dreg"]
    assert van.epochs_to[0.95] == (pytest.approx((3 + 3) / 2), 2, 2)
    assert van.epochs_to[0.99] == (pytest.approx((4 + 5) / 2), 2, 2)   # v1: 0.59 < 0.594 at epoch 4
    assert dreg.epochs_to[0.95] == (pytest.approx((2 + 1) / 2), 2, 2)  # against its own seed's vanilla
    assert dreg.epochs_to[0.99] == (pytest.approx((3 + 2) / 2), 2, 2)
    assert van.epochs_to[1.0] == (pytest.approx((4 + 5) / 2), 2, 2)  # its own best
    assert dreg.epochs_to[1.0] == (pytest.approx((3 + 3) / 2), 2, 2)   # d0 0.80 at 3; d1 0.61 >= 0.60 at 3
    assert dreg.speedup == pytest.approx(4.5 / 2.5)
    assert van.speedup == pytest.approx(1.0)
    assert dreg.extras["branch_distance"] == pytest.approx(2.5) and van.extras == {}  # summary.json of earlier runs
    # A seed that never gets there is counted, not averaged in.
    lone = make_row(setup.selected[0], None)
    assert lone.epochs_to[0.99] == (None, 0, 0) and lone.speedup is None


# ------------------------------------------------------------------ grid expansion
def _grid(**extra) -> Grid:
    data = {"name": "g", "config": BASE, "overrides": ["train.epochs=2"],
            "axes": {"method": ["vanilla", "dreg"], "dreg.lam": [0.1, 0.01], "train.seed": [0, 1]}}
    data.update(extra)
    return Grid.from_dict(data)


def test_grid_drops_dreg_keys_for_vanilla_cells() -> None:
    cells = expand_grid(_grid())
    assert len(cells) == 2 + 4  # vanilla x 2 seeds (lam collapsed) + dreg x 2 lam x 2 seeds
    vanilla = [c for c in cells if c.method == "vanilla"]
    assert [c.values for c in vanilla] == [{"method": "vanilla", "train.seed": 0}, {"method": "vanilla", "train.seed": 1}]
    assert all(not any(o.startswith("dreg.") for o in c.overrides) for c in vanilla)
    assert [c.index for c in cells] == list(range(6))
    assert len({c.name for c in cells}) == 6
    dreg = [c for c in cells if c.method == "dreg"]
    assert {c.values["dreg.lam"] for c in dreg} == {0.1, 0.01}
    assert dreg[0].overrides == ["train.epochs=2", "method=dreg", "dreg.lam=0.1", "train.seed=0"]
    assert expand_grid(_grid()) == cells  # stable


def test_grid_auto_method_lr_grid_and_exclude() -> None:
    cells = expand_grid(Grid.from_dict({"name": "a", "config": BASE,
                                        "axes": {"method": ["vanilla", "dreg"], "dreg.layer": ["R1", "R2"]}}))
    assert [(c.method, c.values) for c in cells] == [
        ("vanilla", {"method": "vanilla"}),
        ("dreg", {"method": "dreg", "dreg.layer": "R1"}),
        ("dreg", {"method": "dreg", "dreg.layer": "R2"}),
    ]
    with pytest.raises(GridError, match="axis 'dreg.enabled': 'dreg.enabled: false' is deprecated: write 'method"):
        expand_grid(Grid.from_dict({"name": "a", "config": BASE, "axes": {"dreg.enabled": [False, True]}}))
    # A key no method in the grid owns would expand to duplicate cells; it is an error instead.
    with pytest.raises(GridError, match="axis 'methods.sam.rho' applies to no cell"):
        expand_grid(Grid.from_dict({"name": "a", "config": BASE,
                                    "axes": {"method": ["vanilla", "dreg"], "methods.sam.rho": [0.1, 0.2]}}))
    with pytest.raises(GridError, match="unknown config key 'methods.sam.rh'"):
        expand_grid(Grid.from_dict({"name": "a", "config": BASE, "axes": {"methods.sam.rh": [0.1]}}))
    cells = expand_grid(_grid(lr_grid={"vanilla": [0.05, 0.1], "dreg": [0.025]},
                              exclude=[{"method": "dreg", "dreg.lam": 0.01}]))
    assert sorted({(c.method, c.values["optim.lr"]) for c in cells}) == [("dreg", 0.025), ("vanilla", 0.05),
                                                                        ("vanilla", 0.1)]
    assert not any(c.values.get("dreg.lam") == 0.01 for c in cells)
    assert len(cells) == 2 * 2 + 2
    assert all(c.overrides[-1].startswith("optim.lr=") for c in cells)
    only = expand_grid(_grid(only=[{"method": "vanilla", "train.seed": 1},
                                     {"method": "dreg", "dreg.lam": 0.01, "train.seed": 0}]))
    assert [c.name for c in only] == ["vanilla_seed1", "dreg_lam0.01_seed0"]
    with pytest.raises(GridError, match="not an axis"):
        _grid(exclude=[{"dreg.lamda": 0.1}])
    with pytest.raises(GridError, match="only entry .* not an axis"):
        _grid(only=[{"optim.lr": 0.1}])  # no lr_grid: optim.lr is not swept
    with pytest.raises(GridError, match="unknown grid key"):
        _grid(axis={"x": [1]})
    with pytest.raises(GridError, match="non-empty list"):
        _grid(axes={"method": "vanilla"})


def test_cell_names_are_filesystem_safe_unique_and_stable() -> None:
    keys = ["model.arch", "dreg.layer", "data.root", "optim.lr", "optim.milestones", "train.note"]
    values = [
        {"model.arch": "torchvision.resnet18", "dreg.layer": "layer4.1.conv2", "data.root": "/data/x y:z",
         "optim.lr": 1e-05, "optim.milestones": [30, 60], "train.note": "a/b\\c*?<>|\"'"},
        {"model.arch": "vgg16", "dreg.layer": "R1", "data.root": "../shared/data", "optim.lr": -0.1,
         "optim.milestones": [], "train.note": ".hidden"},
        {"model.arch": "vgg16", "dreg.layer": "R1", "data.root": "../shared/data", "optim.lr": -0.1,
         "optim.milestones": [], "train.note": "-hidden"},   # collides with the above once sanitized
        {"model.arch": "x" * 400, "dreg.layer": "R1", "data.root": "d", "optim.lr": 0.1, "optim.milestones": [1],
         "train.note": ""},
    ]
    names = cell_names(values, keys)
    assert names == cell_names(values, keys)
    assert len(set(names)) == len(names)
    for name in names:
        assert re.fullmatch(r"[A-Za-z0-9._+-]+", name), name
        assert not name.startswith((".", "-")) and name not in (".", "..")
        assert len(name) <= MAX_NAME_LEN
    assert names[0].startswith("torchvision.resnet18_layerlayer4.1.conv2_")
    assert "lr1e-05" in names[0]
    assert safe_name("../..") not in ("", ".", "..") and safe_name("a b") == "a-b"
    names2 = [c.name for c in expand_grid(_grid())]
    assert names2 == ["vanilla_seed0", "vanilla_seed1", "dreg_lam0.1_seed0", "dreg_lam0.1_seed1",
                      "dreg_lam0.01_seed0", "dreg_lam0.01_seed1"]


# ------------------------------------------------------------------ sweep CLI without training
def _cli(script: str):
    """The ``main`` of a launch/ script, called in this process."""
    return launch_script(script).main


def _sweep_main(argv: list[str]) -> int:
    return _cli("sweep.py")(argv)


def test_sweep_shards_split_the_cells(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    grid = tmp_path / "g.yaml"
    grid.write_text(yaml.safe_dump({"name": "g", "config": BASE, "overrides": ["train.epochs=2"],
                                    "axes": {"method": ["vanilla", "dreg"], "dreg.lam": [0.1, 0.01]}}))
    names = [c.name for c in expand_grid(load_grid(grid))]
    for name in names:  # all finished: a shard only reports which cells are its own
        plant_run(tmp_path / "runs" / "g", name, method="vanilla" if "vanilla" in name else "dreg",
                  curve=[0.5, 0.6], test_acc=0.5)
    assert _sweep_main(["--grid", str(grid), "--runs-root", str(tmp_path / "runs"), "--shard", "1/2"]) == 0
    out = capsys.readouterr().out
    assert "(shard 1/2)" in out
    assert [n for n in names if f"{n}: finished already" in out] == [names[1]]
    assert _sweep_main(["--grid", str(grid), "--shard", "2/2", "--dry-run"]) == 2
    assert _sweep_main(["--grid", str(grid), "--shard", "x", "--dry-run"]) == 2
    assert "I/N" in capsys.readouterr().err


def test_sweep_dry_run_lists_cells_and_count(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    grid = tmp_path / "g.yaml"
    grid.write_text(yaml.safe_dump({"name": "g", "config": BASE,
                                    "axes": {"method": ["vanilla", "dreg"], "dreg.lam": [0.1, 0.01]}}, sort_keys=False))
    done = plant_run(tmp_path / "runs" / "g", "vanilla", method="vanilla", curve=[0.5, 0.6], test_acc=0.5)
    assert _sweep_main(["--grid", str(grid), "--runs-root", str(tmp_path / "runs"), "--dry-run"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert out[-1] == "3 cells"
    assert re.match(r"\s*0\s+partial\s+vanilla\s", out[1])  # planted with 2 epochs; the base config asks for 15
    assert re.match(r"\s*2\s+pending\s+dreg_lam0.01\s", out[3])
    assert not (tmp_path / "runs" / "g" / "sweep.json").exists()  # a dry run writes nothing
    assert disk_status(done, 2) == "finished" and disk_status(done, 15) == "partial"
    assert disk_status(tmp_path / "nothing", 2) == "pending"
    assert _sweep_main(["--grid", str(grid), "--cell-index", "3", "--dry-run"]) == 2
    assert "out of range" in capsys.readouterr().err
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: b\nconfig: %s\naxes: {train.epoch: [1]}\n" % BASE)
    assert _sweep_main(["--grid", str(bad), "--dry-run"]) == 2
    assert "train.epoch" in capsys.readouterr().err


def test_copy_records_takes_only_finished_runs_small_files(tmp_path: Path) -> None:
    root = tmp_path / "runs" / "g"
    done = plant_run(root, "vanilla", method="vanilla", curve=[0.5, 0.6], test_acc=0.5)
    plant_run(root, "dreg", method="dreg", curve=[0.5], test_acc=0.5, finished=False)
    diverged = plant_run(root, "sam", method="sam", curve=[0.5], test_acc=0.5, finished=False)
    with (diverged / "metrics.jsonl").open("a") as f:
        f.write(json.dumps({"kind": "diverged", "step": 12, "epoch": 1, "reason": "not finite"}) + "\n")
    (done / "checkpoints").mkdir()
    (done / "checkpoints" / "last.pt").write_bytes(b"weights")
    (root / "sweep.json").write_text("{}")
    from dreg_dist.report.runs import copy_records, load_runs

    copied = copy_records(root, tmp_path / "records" / "g")
    assert [p.name for p in copied] == ["sam", "vanilla"]  # finished or diverged; not the unfinished one
    assert sorted(p.name for p in (tmp_path / "records" / "g" / "sam").iterdir()) == ["config.yaml", "metrics.jsonl"]
    assert sorted(p.name for p in (tmp_path / "records" / "g" / "vanilla").iterdir()) == \
        ["config.yaml", "metrics.jsonl", "summary.json"]
    assert (tmp_path / "records" / "g" / "sweep.json").is_file()
    plant_run(tmp_path / "runs" / "h", "fisher", method="fisher", curve=[0.5], test_acc=0.5, finished=False)
    (tmp_path / "runs" / "h" / "sweep.json").write_text("{}")
    assert copy_records(tmp_path / "runs" / "h", tmp_path / "records" / "h") == []
    assert not (tmp_path / "records" / "h").exists()  # nothing over yet: no folder of a lone sweep.json
    again = load_runs(tmp_path / "records" / "g")  # the report reads the copies as it read the runs
    assert [(r.name, r.best_val_acc, r.test_acc, r.status) for r in again] == [
        ("sam", 0.5, None, "diverged at step 12"), ("vanilla", 0.6, 0.5, "finished")]


def test_optimizer_variants_cost_and_gap_closed(tmp_path: Path) -> None:
    from dreg_dist.report.analysis import analyse
    from dreg_dist.report.compare import gap_closed
    from dreg_dist.report.markdown import write_report
    from dreg_dist.report.runs import load_runs

    root = tmp_path / "g"
    for seed, (small, large, dreg) in enumerate([(0.80, 0.60, 0.70), (0.82, 0.62, 0.74)]):
        plant_run(root, f"v512_{seed}", method="vanilla", seed=seed, curve=[0.7, small], test_acc=small)
        plant_run(root, f"v4096_{seed}", method="vanilla", batch=4096, seed=seed, curve=[0.5, large], test_acc=large)
        plant_run(root, f"d4096_{seed}", method="dreg", batch=4096, seed=seed, curve=[0.5, dreg], test_acc=dreg,
                  wall=200.0)
    plant_run(root, "lars4096_0", method="vanilla", batch=4096, curve=[0.5, 0.65], test_acc=0.65,
              extra=["optim.name=lars"], wall=110.0)
    analysis = analyse(load_runs(root))
    assert analysis.roles["variant"] == ["optim.name"] and analysis.roles["setup"] == []
    (setup,) = analysis.setups
    rows = {r.group.label: r for r in rows_of(setup, 4096)}
    assert set(rows) == {"vanilla", "vanilla (optimizer=lars)", "dreg"}  # SGD is not named
    assert rows["vanilla"].cost == pytest.approx(1.0) and rows["dreg"].cost == pytest.approx(2.0)
    assert rows["vanilla (optimizer=lars)"].cost == pytest.approx(1.1)
    gap = gap_closed(setup, rows["dreg"].group)
    assert gap is not None and gap.reference_batch == 512 and gap.paired
    assert gap.value == pytest.approx((0.72 - 0.61) / 0.20)
    # Vanilla at 4096 has both of DReg's seeds, so the interval is over the per-seed differences
    # (0.10, 0.12; sd 0.0141), no longer over DReg's own seeds (0.70, 0.74; sd 0.0283).
    assert gap.half_width == pytest.approx(12.706 * 0.0141421 / 2 ** 0.5 / 0.20, rel=1e-4)
    lars = gap_closed(setup, rows["vanilla (optimizer=lars)"].group)
    # Paired with vanilla's seed 0 (0.60), no longer against vanilla's mean over seeds 0-1 (0.61).
    assert lars is not None and lars.value == pytest.approx(0.25) and lars.half_width is None
    assert gap_closed(setup, rows["vanilla"].group).value == pytest.approx(0.0)
    assert gap_closed(setup, rows_of(setup, 512)[0].group) is None  # the reference itself
    text = write_report(root, tmp_path / "report", say=lambda _: None).read_text()
    assert "| gap to vanilla at 512 closed (test, 95% CI) |" in text
    assert "+55% ± 64" in text and "+25% (1 seed)" in text and "| 2.00x |" in text
    # Within vanilla's wall-clock (2 epochs at 100 s) DReg at 200 s/epoch has done 1 epoch: its best then is 0.5.
    assert rows["dreg"].best_in_budget == pytest.approx(0.5) and rows["vanilla"].best_in_budget == pytest.approx(0.61)
    assert "](figures/val_acc_compute_bs4096.png)" in text



def test_time_per_epoch_is_the_median_epoch_so_pauses_and_resumes_do_not_count(tmp_path: Path) -> None:
    root = tmp_path / "g"
    run = plant_run(root, "v", method="vanilla", curve=[0.1 * e for e in range(1, 9)], test_acc=0.8, wall=25.0)
    # 10 s an epoch, but a 2-hour pause in epoch 3 and a resume after epoch 6 whose summary holds
    # only its last launch's 25 s: neither the total nor the last launch is the run's pace.
    times = {e: 10.0 * e + (7200.0 if e >= 3 else 0.0) + (1800.0 if e >= 7 else 0.0) for e in range(1, 9)}
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    for line in lines:
        if line["kind"] == "val":
            line["time"] = times[line["epoch"]]
    (run / "metrics.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    summary = json.loads((run / "summary.json").read_text())
    (run / "summary.json").write_text(json.dumps({**summary, "resumed_from": "checkpoints/last.pt"}))
    (timed,) = load_runs(root)
    assert timed.seconds_per_epoch == pytest.approx(10.0)  # the median of 10, 7210, 10, 10, 10, 1810, 10
    # Records without times (an earlier release's): the summary's wall time, for a run launched once only.
    plant_run(tmp_path / "h", "once", method="vanilla", curve=[0.5, 0.6], test_acc=0.6, wall=30.0)
    (once,) = load_runs(tmp_path / "h")
    assert once.seconds_per_epoch == pytest.approx(15.0)
