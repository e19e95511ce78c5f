"""Follow-up grids that move each selection: to a larger batch under the linear, the sqrt or no
rule (a re-tuning grid), for the tuned run's steps, and the matched-steps grid for the reference's
steps. No training: run folders are planted with the files the trainer writes (its start record
names the peak rate, the steps per epoch and the train size)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional, Sequence

import pytest

from dreg_dist.report.errors import ReportError
from dreg_dist.report.followup_moves import steps_per_epoch
from dreg_dist.report.runs import load_run
from dreg_dist.sweep.grid import expand_grid, load_grid

from ..conftest import launch_script
from .test_report_select import BASE, plant_run

pytestmark = pytest.mark.usefixtures("resolver_in_process")
TRAIN = 45_000


def _sweep(root: Path, batch: int, accumulation: int, cells: Sequence[tuple[str, float, float]],
           train_size: Optional[int] = TRAIN, workers: int = 1, extra: Sequence[str] = ()) -> Path:
    """A stage's folder: one run per (method, lr, best validation), seed 0, 4 epochs, warmup 2.
    Its grid has the axes of DReg's and SAM's own keys, as the study's do: a follow-up that runs
    neither must leave them out (an axis that applies to no cell is an error)."""
    name = root.name
    grid = {"name": name, "config": BASE,
            "overrides": ["train.epochs=4", f"train.global_batch_size={batch}",
                          f"train.accumulation_steps={accumulation}", "optim.warmup_epochs=2"],
            "axes": {"method": sorted({c[0] for c in cells} | {"dreg", "sam"}), "dreg.lam": [0.1],
                     "methods.sam.rho": [0.05], "train.seed": [0]},
            "lr_grid": sorted({c[1] for c in cells}), "exclude": []}
    for method, lr, val in cells:
        run = plant_run(root, f"{method}_lr{lr}", method=method, batch=batch, lr=lr, curve=[val / 2, val, val, val],
                        test_acc=0.5, extra=[f"train.accumulation_steps={accumulation}", "optim.warmup_epochs=2",
                                             *extra], workers=workers if workers > 1 else None)
        lines = (run / "metrics.jsonl").read_text().splitlines()
        start: dict[str, Any] = {"kind": "start", "time": 0.0, "world_size": workers, "lr": lr * batch / 256,
                                 "steps_per_epoch": TRAIN // batch}
        if train_size:
            start["train_size"] = train_size
        (run / "metrics.jsonl").write_text("\n".join([json.dumps(start)] + lines[1:]) + "\n")
    (root / "sweep.json").write_text(json.dumps({"name": name, "grid": grid, "command": ["launch/sweep.py"]}))
    return root


@pytest.fixture
def stages(tmp_path: Path) -> tuple[Path, Path]:
    ref = _sweep(tmp_path / "runs" / "ref", 512, 1, [("vanilla", 0.2, 0.80), ("vanilla", 0.4, 0.82)])
    big = _sweep(tmp_path / "runs" / "big", 4096, 8, [("vanilla", 0.05, 0.60), ("vanilla", 0.1, 0.70),
                                                      ("sam", 0.05, 0.74), ("sam", 0.1, 0.65),
                                                      ("dreg", 0.05, 0.72), ("dreg", 0.1, 0.71)])
    return ref, big


def _cells(path: Path) -> list[tuple]:
    return sorted((c.method, c.values["optim.lr"], c.values.get("train.epochs"), c.values.get("optim.warmup_epochs"))
                  for c in expand_grid(load_grid(path)))


def test_transfer_under_the_sqrt_rule_and_for_the_tuned_runs_steps(stages: tuple[Path, Path], tmp_path: Path) -> None:
    _, big = stages
    out = tmp_path / "sqrt.yaml"
    report = launch_script("report.py").main
    assert report([str(big), "--transfer-grid", str(out), "--batch", "8192", "--seeds", "0", "--rule", "sqrt",
                   "--match-steps"]) == 0
    grid = load_grid(out)
    assert {"train.global_batch_size=8192", "train.accumulation_steps=16", "optim.lr_scaling=sqrt",
            "optim.base_batch_size=4096"} <= set(grid.overrides)
    assert not any(o.startswith(("train.epochs=", "optim.warmup_epochs=")) for o in grid.overrides)
    # The peak each selection trained at (sam 0.05 * 16, vanilla 0.1 * 16), for 40 steps with 20 of warmup:
    # 8 epochs of 5 steps at 8192, 4 warmup epochs.
    assert _cells(out) == [("dreg", 0.8, 8, 4.0), ("sam", 0.8, 8, 4.0), ("vanilla", 1.6, 8, 4.0)]
    assert "8 epochs x 5 steps = 40 steps (for 40), warmup 4.0 epochs = 20 steps" in out.read_text()


def test_a_retuning_grid_sets_rates_directly_around_the_tuned_peak(stages: tuple[Path, Path], tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    _, big = stages
    out = tmp_path / "retune.yaml"
    report = launch_script("report.py").main
    assert report([str(big), "--transfer-grid", str(out), "--batch", "8192", "--seeds", "0", "--rule", "none",
                   "--rate-factors", "0.25,0.5", "--methods", "vanilla"]) == 0
    assert "optim.lr_scaling=none" in load_grid(out).overrides
    assert _cells(out) == [("vanilla", 0.4, None, None), ("vanilla", 0.8, None, None)]
    # The linear rule keeps optim.lr as selected (the config's rule scales it).
    assert report([str(big), "--transfer-grid", str(out), "--batch", "8192", "--seeds", "0"]) == 0
    assert _cells(out) == [("dreg", 0.05, None, None), ("sam", 0.05, None, None), ("vanilla", 0.1, None, None)]
    for bad, said in ((["--rate-factors", "0.5"], "--rate-factors goes with --rule none"),
                      (["--methods", "nope"], "--methods nope: no run of it in these folders: check its spelling")):
        assert report([str(big), "--transfer-grid", str(out), "--batch", "8192", *bad]) == 2
        assert said in capsys.readouterr().err
    assert report([str(big), "--match-steps"]) == 2
    assert "go with --transfer-grid" in capsys.readouterr().err


def test_matched_steps_for_the_reference_with_the_best_variants(stages: tuple[Path, Path], tmp_path: Path,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    ref, big = stages
    out = tmp_path / "steps.yaml"
    report = launch_script("report.py").main
    assert report([str(big), "--against", str(ref), "--steps-grid", str(out), "--seeds", "0", "--best", "1"]) == 0
    # The reference: 87 steps an epoch x 4 = 348 steps, 174 of warmup; at 4096 (10 an epoch) 35 epochs
    # (350 steps, within an epoch's) and 17.4 warmup epochs. SAM is the best on validation (74% vs 72%).
    assert _cells(out) == [("sam", 0.05, 35, 17.4), ("vanilla", 0.1, 35, 17.4)]
    text = out.read_text()
    assert "35 epochs x 10 steps = 350 steps (for 348), warmup 17.4 epochs = 174 steps" in text
    assert "sam batch 4096: lr 0.05, 74.00% best validation" in text
    assert report([str(ref), "--against", str(big), "--steps-grid", str(out), "--seeds", "0"]) == 3  # an answer
    assert "nothing to run at matched steps" in capsys.readouterr().err
    assert report([str(big), "--against", str(ref), "--steps-grid", str(out), "--best", "0"]) == 2
    assert "--best must be 1 or more" in capsys.readouterr().err
    assert report([str(big), "--against", str(tmp_path / "typo"), "--steps-grid", str(out)]) == 2
    assert "no run folders in" in capsys.readouterr().err


def test_a_selection_whose_runs_are_in_an_edge_folder_is_kept(stages: tuple[Path, Path], tmp_path: Path) -> None:
    """The stage's own folders are all those named before --against: SAM's best rate ran in the
    edge grid's folder, and its matched-steps cell is still written."""
    ref, big = stages
    edge = _sweep(tmp_path / "runs" / "edge", 4096, 8, [("sam", 0.025, 0.76)])
    out = tmp_path / "steps.yaml"
    report = launch_script("report.py").main
    assert report([str(big), str(edge), "--against", str(ref), "--steps-grid", str(out), "--best", "1"]) == 0
    assert _cells(out) == [("sam", 0.025, 35, 17.4), ("vanilla", 0.1, 35, 17.4)]


def test_best_ranks_across_batch_setups_and_a_baseline_runs_where_its_variants_do(
        stages: tuple[Path, Path], tmp_path: Path) -> None:
    """A method on 8 worker processes is ranked with the one-process ones at its batch: below the
    best one it is left out, and so is vanilla on those 8 workers, which is there to pair it."""
    ref, big = stages
    workers = _sweep(tmp_path / "runs" / "workers", 4096, 1, [("vanilla", 0.05, 0.64), ("vanilla", 0.1, 0.66),
                                                              ("gradientmix", 0.05, 0.69), ("gradientmix", 0.1, 0.6)],
                     workers=8)
    out = tmp_path / "steps.yaml"
    report = launch_script("report.py").main
    assert report([str(workers), "--against", str(big), str(ref), "--steps-grid", str(out), "--best", "1"]) == 3
    assert report([str(workers), "--against", str(big), str(ref), "--steps-grid", str(out), "--best", "3"]) == 0
    assert _cells(out) == [("gradientmix", 0.05, 35, 17.4), ("vanilla", 0.1, 35, 17.4)]  # 3rd of sam, dreg, it


def test_steps_per_epoch_from_an_older_record_needs_unambiguous_bounds(tmp_path: Path) -> None:
    root = _sweep(tmp_path / "runs" / "old", 4096, 8, [("vanilla", 0.1, 0.7)], train_size=None)
    run = load_run(root / "vanilla_lr0.1")
    assert run is not None
    assert steps_per_epoch(run, 8192) == 5  # 40,960-45,055 images: 5 batches of 8192 either way
    with pytest.raises(ReportError, match="does not tell the steps per epoch at batch 3000"):
        steps_per_epoch(run, 3000)  # 13 to 15


def test_a_second_knob_value_runs_at_the_selected_rate_only(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """SAM's other rho where its rate was chosen: the first grid excluded it from the rate grid,
    the follow-up runs it (that exclude dropped), and vanilla, which owns no such key, gets none."""
    root = tmp_path / "runs" / "knob"
    grid = {"name": "knob", "config": BASE, "overrides": ["train.epochs=2"],
            "axes": {"method": ["vanilla", "sam", "dreg"], "methods.sam.rho": [0.02, 0.05], "dreg.lam": [0.1, 0.01],
                     "train.seed": [0]},
            "lr_grid": [0.05, 0.1], "exclude": [{"method": "sam", "methods.sam.rho": 0.02}],
            "tune": ["methods.sam.rho"]}
    for method, lr, val in (("vanilla", 0.05, 0.6), ("vanilla", 0.1, 0.7), ("sam", 0.05, 0.74), ("sam", 0.1, 0.65)):
        plant_run(root, f"{method}_{lr}", method=method, lr=lr, curve=[val / 2, val], test_acc=0.5)
    (root / "sweep.json").write_text(json.dumps({"name": "knob", "grid": grid, "command": ["launch/sweep.py"]}))
    out = tmp_path / "rho.yaml"
    report = launch_script("report.py").main
    assert report([str(root), "--knob-grid", str(out), "--seeds", "0", "--set", "methods.sam.rho=0.02"]) == 0
    cells = [(c.method, c.values["optim.lr"], c.values.get("methods.sam.rho")) for c in expand_grid(load_grid(out))]
    assert cells == [("sam", 0.05, 0.02)]
    assert "sam batch 512: lr 0.05 with methods.sam.rho=0.02" in out.read_text()
    assert report([str(root), "--knob-grid", str(out), "--set", "dreg.lam=0.5"]) == 2  # DReg never ran here
    assert "--set dreg.lam: no method of these records owns it" in capsys.readouterr().err
    assert report([str(root), "--knob-grid", str(out)]) == 2
    assert "needs --set KEY=VALUE" in capsys.readouterr().err
    assert report([str(root), "--knob-grid", str(out), "--set", "methods.sam.rho=0.05"]) == 3  # its own value
    assert "with another value of methods.sam.rho" in capsys.readouterr().err
    assert report([str(root), "--knob-grid", str(out), "--set", "methods.sam.rho=["]) == 2
    assert "the value is not valid YAML" in capsys.readouterr().err


def test_a_key_of_the_run_is_a_control_for_every_selection_at_multiples_of_its_rate(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A longer warmup at twice the rate for a folder tuned at 2 warmup epochs (GradientMix's):
    every selection gets it, a selection that ran it already gets none, and a misspelt key that no
    method owns and no run has is refused rather than set on every cell."""
    root = tmp_path / "runs" / "gm"
    grid = {"name": "gm", "config": BASE, "overrides": ["train.epochs=2"],
            "axes": {"method": ["vanilla", "sam"], "train.seed": [0]}, "lr_grid": [0.05, 0.1]}
    for method, lr, val in (("vanilla", 0.05, 0.7), ("vanilla", 0.1, 0.6), ("sam", 0.05, 0.6), ("sam", 0.1, 0.74)):
        plant_run(root, f"{method}_{lr}", method=method, lr=lr, curve=[val / 2, val], test_acc=0.5)
    (root / "sweep.json").write_text(json.dumps({"name": "gm", "grid": grid, "command": ["launch/sweep.py"]}))
    out = tmp_path / "warmup.yaml"
    report = launch_script("report.py").main
    warmup = load_run(root / "vanilla_0.05").flat["optim.warmup_epochs"]
    assert report([str(root), "--knob-grid", str(out), "--seeds", "0", "--set", f"optim.warmup_epochs={warmup + 3}",
                   "--rate-factors", "2"]) == 0
    cells = sorted((c.method, c.values["optim.lr"], c.values["optim.warmup_epochs"])
                   for c in expand_grid(load_grid(out)))
    assert cells == [("sam", 0.2, warmup + 3), ("vanilla", 0.1, warmup + 3)]
    assert "optim.warmup_epochs" in load_grid(out).tune  # selected with the rate, not a variant of its own
    assert report([str(root), "--knob-grid", str(out), "--set", f"optim.warmup_epochs={warmup}"]) == 3
    assert "with another value of optim.warmup_epochs" in capsys.readouterr().err  # every selection ran it
    assert report([str(root), "--knob-grid", str(out), "--set", "optim.warmup_epoch=5"]) == 2
    assert "--set optim.warmup_epoch: no method of these records owns it and no run has it: check its spelling" \
        in capsys.readouterr().err
    assert report([str(root), "--edge-grid", str(out), "--rate-factors", "2"]) == 2
    assert "--rate-factors goes with --transfer-grid or --knob-grid" in capsys.readouterr().err


def test_the_best_method_moves_to_another_network_without_its_baseline(stages: tuple[Path, Path],
                                                                      tmp_path: Path) -> None:
    """Stage 5's grid: the best method of (a) (SAM here, 74 against DReg's 72), at its selected rate
    halved, as is and doubled, on the wider network; vanilla (its own grid there) and DReg get none."""
    ref, big = stages
    out = tmp_path / "wider.yaml"
    report = launch_script("report.py").main
    assert report([str(big), "--against", str(ref), "--knob-grid", str(out), "--seeds", "0", "--set",
                   "model.arch=cnn_base", "--set", "train.epochs=3", "--rate-factors", "0.5,1,2", "--best", "1"]) == 0
    cells = sorted((c.method, c.values["optim.lr"], c.values["model.arch"], c.values["train.epochs"])
                   for c in expand_grid(load_grid(out)))
    assert cells == [("sam", 0.025, "cnn_base", 3), ("sam", 0.05, "cnn_base", 3), ("sam", 0.1, "cnn_base", 3)]
    assert report([str(big), "--against", str(ref), "--knob-grid", str(out), "--seeds", "0", "--set",
                   "model.arch=cnn_base", "--best", "2"]) == 0
    assert {c.method for c in expand_grid(load_grid(out))} == {"sam", "dreg"}


def test_a_knob_tuned_in_another_folder_of_the_family_goes_with_its_selection(
        stages: tuple[Path, Path], tmp_path: Path) -> None:
    """Vanilla's warmup is tuned in a folder of its own (the first grid fixes it by an override):
    the seeds and the edge of a selection made there run its warmup, the others keep theirs."""
    ref, big = stages
    warm = tmp_path / "runs" / "warm"
    for lr, val in ((0.1, 0.75), (0.2, 0.78)):
        plant_run(warm, f"w5_lr{lr}", method="vanilla", batch=4096, lr=lr, curve=[val / 2, val, val, val],
                  test_acc=0.5, extra=["train.accumulation_steps=8", "optim.warmup_epochs=5"])
    grid = {"name": "warm", "config": BASE, "overrides": ["train.epochs=4", "train.global_batch_size=4096",
                                                          "train.accumulation_steps=8"],
            "axes": {"method": ["vanilla"], "optim.warmup_epochs": [5], "train.seed": [0]},
            "lr_grid": [0.1, 0.2], "exclude": [], "tune": ["optim.warmup_epochs"]}
    (warm / "sweep.json").write_text(json.dumps({"name": "warm", "grid": grid, "command": ["launch/sweep.py"]}))
    report = launch_script("report.py").main
    seeds, edge = tmp_path / "seeds.yaml", tmp_path / "edge.yaml"
    assert report([str(big), str(warm), "--seed-grid", str(seeds), "--seeds", "1"]) == 0
    assert _cells(seeds) == [("dreg", 0.05, None, 2), ("sam", 0.05, None, 2), ("vanilla", 0.2, None, 5)]
    assert "optim.warmup_epochs" in load_grid(seeds).tune
    assert report([str(big), str(warm), "--edge-grid", str(edge)]) == 0
    assert ("vanilla", 0.4, None, 5) in _cells(edge)  # beyond 0.2, at the warmup it was best with


def test_best_counts_methods_not_two_forms_of_one(stages: tuple[Path, Path], tmp_path: Path) -> None:
    """Two DReg variants ahead of SAM: the two best methods are DReg (its better variant) and SAM."""
    ref, big = stages
    more = [_sweep(tmp_path / "runs" / f"lam{lam}", 4096, 8, [("dreg", 0.05, val)], extra=[f"dreg.lam={lam}"])
            for lam, val in ((0.01, 0.76), (0.5, 0.75))]
    out = tmp_path / "steps.yaml"
    report = launch_script("report.py").main
    assert report([str(big), *map(str, more), "--against", str(ref), "--steps-grid", str(out), "--best", "2"]) == 0
    cells = sorted((c.method, c.values.get("dreg.lam"), c.values["optim.lr"]) for c in expand_grid(load_grid(out)))
    assert cells == [("dreg", 0.01, 0.05), ("sam", None, 0.05), ("vanilla", None, 0.1)]


def test_transfer_of_the_best_method_takes_its_best_variant_and_the_baseline(stages: tuple[Path, Path],
                                                                             tmp_path: Path) -> None:
    """`--best 1` with --transfer-grid: DReg ahead in two variants moves at its better one, with
    vanilla beside it; a folder whose selections are not the best has nothing to move."""
    ref, big = stages
    more = [_sweep(tmp_path / "runs" / f"lam{lam}", 4096, 8, [("dreg", 0.05, val)], extra=[f"dreg.lam={lam}"])
            for lam, val in ((0.01, 0.76), (0.5, 0.75))]
    out = tmp_path / "x8192.yaml"
    report = launch_script("report.py").main
    assert report([str(big), *map(str, more), "--against", str(ref), "--transfer-grid", str(out), "--batch", "8192",
                   "--seeds", "0", "--best", "1"]) == 0
    cells = sorted((c.method, c.values.get("dreg.lam"), c.values["optim.lr"]) for c in expand_grid(load_grid(out)))
    assert cells == [("dreg", 0.01, 0.05), ("vanilla", None, 0.1)]
    assert report([str(big), "--against", *map(str, more), str(ref), "--transfer-grid", str(tmp_path / "b.yaml"),
                   "--batch", "8192", "--seeds", "0", "--best", "1"]) == 0
    assert [c.method for c in expand_grid(load_grid(tmp_path / "b.yaml"))] == ["vanilla"]  # DReg's runs are elsewhere
    assert report([str(more[1]), "--against", str(big), str(more[0]), str(ref), "--transfer-grid",
                   str(tmp_path / "c.yaml"), "--batch", "8192", "--seeds", "0", "--best", "1"]) == 3  # nothing to move: an answer


def test_a_follow_up_states_its_base_grid_as_the_setup_its_cells_change(stages: tuple[Path, Path],
                                                                       tmp_path: Path) -> None:
    # Copied bare, the first grid's "2 warmup epochs, seed 0" would describe cells that set their own.
    _, big = stages
    sweep = json.loads((big / "sweep.json").read_text())
    sweep["grid"]["description"] = "CIFAR-10, cnn_tiny, 2 warmup epochs, seed 0."
    (big / "sweep.json").write_text(json.dumps(sweep))
    report = launch_script("report.py").main
    for kind, args in (("--seed-grid", ["--seeds", "1,2"]), ("--edge-grid", []),
                       ("--transfer-grid", ["--batch", "8192", "--seeds", "0"]),
                       ("--knob-grid", ["--seeds", "0", "--set", "optim.warmup_epochs=5", "--rate-factors", "2"])):
        out = tmp_path / f"{kind[2:]}.yaml"
        assert report([str(big), kind, str(out), *args]) == 0, kind
        description = " ".join(load_grid(out).description.split())
        assert description.endswith("The cells set their own seeds, rates and tuned knobs over the setup of "
                                    "'big': CIFAR-10, cnn_tiny, 2 warmup epochs, seed 0."), (kind, description)
        assert not description.startswith("CIFAR-10"), kind
