"""Report options and sections: --title / --preface / --step-cost and a Reproduce line that
regenerates the report, seed-paired differences against the baseline, learning-rate transfer,
and batch setups that differ in accumulation and worker count at one batch size. No training:
run folders are planted with the files the trainer writes."""

from __future__ import annotations

import json
import shlex
from pathlib import Path
from types import ModuleType

import pytest

from dreg_dist.report.analysis import analyse
from dreg_dist.report.compare import compute_cost, gap_closed, transfers
from dreg_dist.report.stats import mean_ci
from dreg_dist.report.markdown import write_report
from dreg_dist.report.errors import ReportError
from dreg_dist.report.runs import load_runs
from dreg_dist.report.step_costs import read_step_costs
from dreg_dist.report.compare import rows as rows_of

from ..conftest import REPO, launch_script
from .test_report_select import plant_run


def _report_cli() -> ModuleType:
    return launch_script("report.py")


def _table(text: str, heading: str) -> tuple[list[str], dict[str, list[str]]]:
    """The header and the rows (by first cell) of the first table under ``heading``."""
    lines = text.split(heading + "\n", 1)[1].splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("|"))
    rows = []
    for line in lines[start:]:
        if not line.startswith("|"):
            break
        rows.append([c.strip() for c in line.strip().strip("|").split(" | ")])
    return rows[0], {r[0]: r for r in rows[2:]}


def _cell(text: str, heading: str, row: str, column: str) -> str:
    header, rows = _table(text, heading)
    return rows[row][header.index(column)]


def _reproduce_argv(text: str) -> list[str]:
    (line,) = [x for x in text.split("Reproduce:", 1)[1].split("```")[1].splitlines()
               if x.startswith("python launch/report.py ")]
    return shlex.split(line)[2:]


# ------------------------------------------------------------------ --title, --preface, Reproduce
def test_title_preface_and_a_reproduce_line_that_regenerates_the_report(tmp_path: Path) -> None:
    root = tmp_path / "runs" / "g"
    for lr, acc in ((0.05, 0.7), (0.1, 0.8)):
        plant_run(root, f"v{lr}", method="vanilla", lr=lr, curve=[acc / 2, acc], test_acc=acc - 0.02)
    plant_run(root, "d", method="dreg", lr=0.05, curve=[0.5, 0.75], test_acc=0.74)
    preface = tmp_path / "verdict.md"
    preface.write_text("**Verdict**: nothing beats the baseline.\n\nA table | pipe stays as written.\n")
    costs = tmp_path / "cost.json"
    costs.write_text(json.dumps({"costs": [{"label": "d", "runs": ["g/d"], "ratio": 2.0}]}))
    out = tmp_path / "out"
    cli = _report_cli()
    assert cli.main([str(root), "--out", str(out), "--title", "My study: A | B's", "--preface", str(preface),
                     "--step-cost", str(costs), "--bs-groups", "512"]) == 0
    text = (out / "report.md").read_text()
    assert text.startswith("# My study: A | B's\n\n**Verdict**: nothing beats the baseline.\n\n"
                           "A table | pipe stays as written.\n\nRuns: ")
    argv = _reproduce_argv(text)
    assert argv == [str(root), "--out", str(out), "--bs-groups", "512", "--title", "My study: A | B's",
                    "--preface", str(preface), "--step-cost", str(costs)]  # outside the repository: absolute
    # That line alone regenerates the report, byte for byte (written elsewhere, figures not drawn).
    again = cli.report(cli.build_parser().parse_args(argv), out_dir=tmp_path / "again", figures=False)
    assert again.read_text() == text
    assert not (tmp_path / "again" / "figures").exists()
    # Paths inside the repository are named relative to its root, wherever the command ran.
    assert cli.repo_path(REPO / "docs" / "results" / "x") == "docs/results/x"
    # Without --title the sweep names make the title, and the line does not invent one.
    assert cli.main([str(root), "--out", str(tmp_path / "plain")]) == 0
    plain = (tmp_path / "plain" / "report.md").read_text()
    assert plain.startswith("# Results: g\n\nRuns: ") and "--title" not in _reproduce_argv(plain)
    assert cli.main([str(root), "--out", str(tmp_path / "x"), "--preface", str(tmp_path / "missing.md")]) == 2


# ------------------------------------------------------------------ --step-cost
def test_step_cost_column_and_compute_budget(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = tmp_path / "runs" / "g"
    for seed in (0, 1):
        plant_run(root, f"v{seed}", method="vanilla", batch=4096, seed=seed, curve=[0.4, 0.5, 0.6, 0.7],
                  test_acc=0.7)
        # 3x vanilla's wall-clock in the sweep (a busy machine), 2x per step on the benchmark.
        plant_run(root, f"d{seed}", method="dreg", batch=4096, seed=seed, curve=[0.5, 0.6, 0.7, 0.8],
                  test_acc=0.8, wall=300.0)
    plant_run(root, "s0", method="sam", batch=4096, curve=[0.45, 0.55, 0.65, 0.75], test_acc=0.75, wall=200.0)
    cost_file = tmp_path / "cost.json"
    cost_file.write_text(json.dumps({
        "machine": {"cpu": "test cpu", "threads": 1},
        "costs": [{"label": "dreg", "runs": ["g/d0", "g/d1"], "reference": "vanilla", "ms_per_step": 20.0,
                   "ratio": 2.0},
                  {"label": "elsewhere", "runs": ["other_sweep/x"], "reference": "vanilla", "ratio": 1.5}]}))

    runs = load_runs(root)
    assert read_step_costs(cost_file).apply(runs) == 1  # other_sweep/x is not in this report
    assert {r.name: r.step_cost for r in runs} == {"d0": 2.0, "d1": 2.0, "s0": None, "v0": None, "v1": None}
    (setup,) = analyse(runs).setups
    rows = {r.group.method: r for r in rows_of(setup, 4096)}
    assert rows["dreg"].cost == pytest.approx(3.0) and rows["dreg"].step_cost == pytest.approx(2.0)
    # Vanilla's budget is 4 epochs: at 2x per step DReg has done 2 of its epochs (best 0.6), where
    # the wall-clock ratio (3x) would have allowed 1.33 (best 0.5). SAM is not benchmarked: wall-clock, 2x.
    assert rows["dreg"].best_in_budget == pytest.approx(0.6)
    assert rows["sam"].step_cost is None and rows["sam"].best_in_budget == pytest.approx(0.55)
    # Compute to vanilla's best (0.7 at its epoch 4): DReg at epoch 3 x 2.0 per step = 6 vanilla
    # epochs; SAM at epoch 4 x 2.0 wall-clock = 8; vanilla its own 4.
    assert rows["dreg"].compute_to_best == (pytest.approx(6.0), 2, 2)
    assert rows["sam"].compute_to_best == (pytest.approx(8.0), 1, 1)
    assert rows["vanilla"].compute_to_best == (pytest.approx(4.0), 2, 2)
    assert compute_cost(setup, rows["dreg"].group) == pytest.approx(2.0)
    assert compute_cost(setup, rows["sam"].group) == pytest.approx(2.0)

    said: list[str] = []
    text = write_report(root, tmp_path / "rep", step_cost=cost_file, say=said.append, figures=False).read_text()
    heading = "## Batch size 4096"
    assert _cell(text, heading, "dreg", "step cost vs vanilla (bench)") == "2.00x"
    assert _cell(text, heading, "dreg", "time/epoch vs vanilla") == "3.00x"
    assert _cell(text, heading, "sam", "step cost vs vanilla (bench)") == "—"
    assert _cell(text, heading, "dreg", "best val acc in vanilla's time (%)") == "60.00"
    assert _cell(text, heading, "dreg", "compute to vanilla's best (vanilla epochs)") == "6"
    assert "**Step cost vs vanilla (bench)**" in text and 'cpu="test cpu", threads=1' in text
    assert "uses it where a group has one" in text and "epochs x step cost" in text
    assert "benchmarked step cost over vanilla's where the method has one" in text
    assert any("1 run id(s)" in line for line in said)
    # Without the file: no column, and the text says the budget is wall-clock.
    plain = write_report(root, tmp_path / "plain", say=lambda _: None, figures=False).read_text()
    assert "step cost vs vanilla (bench)" not in plain
    assert _cell(plain, heading, "dreg", "best val acc in vanilla's time (%)") == "50.00"
    assert "by the epoch whose wall-clock (epochs x time/epoch) matches vanilla's" in plain

    # A ratio against another method, or an entry without one, is refused with one line.
    cli = _report_cli()
    for bad in ({"costs": [{"runs": ["g/d0"], "reference": "sam", "ratio": 2.0}]},
                {"costs": [{"runs": ["g/d0"]}]}, {"machine": {}}):
        cost_file.write_text(json.dumps(bad))
        with pytest.raises(ReportError):
            write_report(root, tmp_path / "bad", step_cost=cost_file, say=lambda _: None, figures=False)
        assert cli.main([str(root), "--out", str(tmp_path / "bad"), "--step-cost", str(cost_file)]) == 2
        assert "step-cost file" in capsys.readouterr().err


# ------------------------------------------------------------------ seed-paired differences
def test_differences_against_the_baseline_are_paired_by_seed(tmp_path: Path) -> None:
    root = tmp_path / "runs" / "g"
    plan = {  # (method, batch) -> test accuracy per seed
        ("vanilla", 512): {0: 0.80, 1: 0.81, 2: 0.82},
        ("vanilla", 4096): {0: 0.60, 1: 0.64, 2: 0.62},
        ("dreg", 4096): {0: 0.61, 1: 0.66, 2: 0.62},      # +1, +2, +0 points on the same seeds
        ("sam", 4096): {0: 0.65, 1: 0.70, 2: 0.69},       # +5, +6, +7
        ("gradnorm", 4096): {3: 0.70},                    # a seed vanilla never ran
        ("fisher", 4096): {3: 0.63, 4: 0.65},
    }
    for (method, batch), tests in plan.items():
        for seed, acc in tests.items():
            plant_run(root, f"{method}_{batch}_{seed}", method=method, batch=batch, seed=seed, curve=[acc / 2, acc],
                      test_acc=acc)
    (setup,) = analyse(load_runs(root)).setups
    rows = {r.group.method: r for r in rows_of(setup, 4096)}
    dreg = rows["dreg"].vs_baseline
    assert dreg is not None and dreg.paired and dreg.seeds == 3
    assert dreg.mean == pytest.approx(0.01) and dreg.half_width == pytest.approx(4.303 * 0.01 / 3 ** 0.5)
    assert dreg.inside_noise
    # Pairing removes the seed-to-seed spread both share: DReg's own seeds alone give a wider interval.
    assert dreg.half_width < mean_ci(list(plan[("dreg", 4096)].values()))[1]
    gap = gap_closed(setup, rows["dreg"].group)
    assert gap is not None and gap.paired and gap.value == pytest.approx(0.01 / (0.81 - 0.62))
    assert gap.half_width == pytest.approx(dreg.half_width / (0.81 - 0.62))
    assert rows["sam"].vs_baseline.mean == pytest.approx(0.06) and not rows["sam"].vs_baseline.inside_noise
    lone = rows["gradnorm"].vs_baseline
    assert not lone.paired and lone.mean == pytest.approx(0.70 - 0.62) and lone.half_width is None
    fisher = rows["fisher"].vs_baseline
    assert not fisher.paired and fisher.half_width == pytest.approx(12.706 * 0.02 / 2 ** 0.5 / 2 ** 0.5)
    assert rows["vanilla"].vs_baseline is None

    text = write_report(root, tmp_path / "rep", say=lambda _: None, figures=False).read_text()
    column, heading = "vs vanilla, test (points, 95% CI)", "## Batch size 4096"
    assert _cell(text, heading, "dreg", column) == "+1.00 ± 2.48 (inside seed noise)"
    assert _cell(text, heading, "sam", column) == "+6.00 ± 2.48"
    assert _cell(text, heading, "gradnorm", column) == "+8.00 (1 seed) (unpaired)"
    assert _cell(text, heading, "fisher", column) == "+2.00 ± 12.71 (inside seed noise) (unpaired)"
    assert _cell(text, heading, "vanilla", column) == "—"
    assert _cell(text, heading, "dreg", "gap to vanilla at 512 closed (test, 95% CI)") == "+5% ± 13"


# ------------------------------------------------------------------ learning-rate transfer
def test_learning_rate_transfer_section(tmp_path: Path) -> None:
    tune, moved = tmp_path / "runs" / "tune", tmp_path / "runs" / "transfer"
    # Tuning at 512 (selection on validation; the selected rate has seeds 0 and 1).
    for method, lr, val, tests in (("vanilla", 0.05, 0.70, {0: 0.69}), ("vanilla", 0.1, 0.80, {0: 0.70, 1: 0.72}),
                                   ("dreg", 0.05, 0.85, {0: 0.74, 1: 0.75}), ("dreg", 0.1, 0.60, {0: 0.59}),
                                   ("sam", 0.05, 0.60, {0: 0.58}), ("sam", 0.1, 0.82, {0: 0.73, 1: 0.74})):
        for seed, test in tests.items():
            plant_run(tune, f"{method}_{lr}_{seed}", method=method, lr=lr, seed=seed, curve=[val / 2, val],
                      test_acc=test)
    # The transfer grid: each selected rate at 1024, seeds 0 and 1, no re-tuning.
    for method, lr, tests in (("vanilla", 0.1, {0: 0.66, 1: 0.70}), ("dreg", 0.05, {0: 0.69, 1: 0.73})):
        for seed, test in tests.items():
            plant_run(moved, f"{method}_{seed}", method=method, lr=lr, batch=1024, seed=seed,
                      curve=[test / 2, test + 0.01], test_acc=test)
    for seed in (0, 1):  # SAM diverges at 1024 before its first validation
        run = plant_run(moved, f"sam_{seed}", method="sam", lr=0.1, batch=1024, seed=seed, curve=[], test_acc=0.0,
                        finished=False, extra=["train.epochs=2"])
        with open(run / "metrics.jsonl", "a") as f:
            f.write(json.dumps({"kind": "diverged", "step": 3, "epoch": 1, "reason": "loss is not finite"}) + "\n")

    analysis = analyse(load_runs(tune) + load_runs(moved))
    (setup,) = analysis.setups
    found = {t.tuned.method: t for t in transfers(setup)}
    assert set(found) == {"vanilla", "dreg", "sam"}
    assert found["vanilla"].is_baseline and found["vanilla"].change == pytest.approx(0.68 - 0.71)
    assert found["dreg"].change == pytest.approx(0.71 - 0.745)
    loss = found["dreg"].loss_vs_baseline()  # per seed: (0.69-0.66)-(0.74-0.70) = -0.01; (0.73-0.70)-(0.75-0.72) = 0
    assert loss is not None and loss.paired and loss.seeds == 2
    assert loss.mean == pytest.approx(-0.005) and loss.half_width == pytest.approx(12.706 * 0.01 / 2 ** 0.5 / 2 ** 0.5)
    assert found["sam"].moved.diverged == 2 and found["sam"].change is None

    text = write_report([tune, moved], tmp_path / "rep", say=lambda _: None, figures=False).read_text()
    heading = "## Learning-rate transfer to batch 1024"
    header, rows = _table(text, heading)
    assert header == ["method", "lr (selected at 512)", "seeds at 512", "seeds at 1024", "test acc at 512 (%)",
                      "test acc at 1024 (%)", "change (points)", "loss against vanilla under transfer (points, 95% CI)",
                      "best val acc at 1024 (%)"]
    assert rows["vanilla"][1:8] == ["0.1", "0, 1", "0, 1", "71.00 ± 12.71", "68.00 ± 25.41", "-3.00",
                                    "— (the reference)"]
    assert rows["dreg"][1:8] == ["0.05", "0, 1", "0, 1", "74.50 ± 6.35", "71.00 ± 25.41", "-3.50",
                                 "-0.50 ± 6.35 (inside seed noise)"]
    assert rows["dreg"][8] == "72.00 ± 25.41"  # best validation at 1024: test + 1 point here
    assert rows["sam"][5] == "diverged (2/2 seeds)" and rows["sam"][6] == "—" and rows["sam"][8] == "—"
    assert "](figures/lr_transfer_bs1024.png)" in text
    # Nor does it vanish from the batch-size table: named under it, and in the selection table.
    assert "Diverged before their first validation (no row): sam at lr 0.1 (seeds 0, 1)." in text
    assert "| sam | 1024 | 0.1: diverged before validating | — | all |" in text
    assert "2 diverged (stopped on a non-finite value; counted with what they reached; 2 before their first " \
           "validation)" in text
    # A variant whose rates at the larger batch are not just the selected one is no transfer.
    plant_run(moved, "dreg_retuned", method="dreg", lr=0.1, batch=1024, curve=[0.3, 0.6], test_acc=0.6)
    assert {t.tuned.method for t in transfers(analyse(load_runs(tune) + load_runs(moved)).setups[0])} == \
        {"vanilla", "sam"}

    pytest.importorskip("matplotlib")
    drawn = write_report([tune, moved], tmp_path / "drawn", say=lambda _: None)
    assert "](figures/lr_transfer_bs1024.png)" in drawn.read_text()
    assert (tmp_path / "drawn" / "figures" / "lr_transfer_bs1024.png").read_bytes()[:4] == b"\x89PNG"


# ------------------------------------------------------------------ batch setups at one batch size
def test_accumulation_and_worker_setups_at_one_batch_size(tmp_path: Path) -> None:
    """GradientMix on 8 real workers (no accumulation) with vanilla on the same 8 as its
    reference, every other method on 8 accumulated micro-batches in one process, all at 4096,
    vanilla at 512 on one process: one table per batch setup, each against its own vanilla."""
    one, eight = ["train.accumulation_steps=8"], ["train.accumulation_steps=1"]
    root, gm = tmp_path / "runs" / "h2h", tmp_path / "runs" / "gm"
    plant_run(root, "v512", method="vanilla", batch=512, curve=[0.6, 0.80], test_acc=0.80, workers=1)
    for lr, acc in ((0.05, 0.62), (0.1, 0.58)):
        plant_run(root, f"v4096_{lr}", method="vanilla", batch=4096, lr=lr, curve=[0.4, acc], test_acc=acc,
                  extra=one, workers=1)
    plant_run(root, "d4096", method="dreg", batch=4096, lr=0.05, curve=[0.4, 0.66], test_acc=0.66, extra=one,
              workers=1)
    plant_run(gm, "v4096_8", method="vanilla", batch=4096, lr=0.05, curve=[0.4, 0.64], test_acc=0.64, extra=eight,
              workers=8, wall=50.0)
    for lr, acc in ((0.025, 0.66), (0.05, 0.72), (0.1, 0.60)):
        plant_run(gm, f"gm_{lr}", method="gradientmix", batch=4096, lr=lr, curve=[0.4, acc], test_acc=acc,
                  extra=eight, workers=8, wall=75.0)

    analysis = analyse(load_runs(root) + load_runs(gm))
    assert analysis.roles["batch"] == ["train.accumulation_steps", "train.global_batch_size", "world_size"]
    assert analysis.roles["setup"] == []
    (setup,) = analysis.setups
    acc1 = (("train.accumulation_steps", 1), ("world_size", 8))
    acc8 = (("train.accumulation_steps", 8), ("world_size", 1))
    assert setup.batch_keys == [(512, (("train.accumulation_steps", 1), ("world_size", 1))), (4096, acc1),
                                (4096, acc8)]
    rows1 = {r.group.method: r for r in rows_of(setup, 4096, acc1)}
    rows8 = {r.group.method: r for r in rows_of(setup, 4096, acc8)}
    assert set(rows1) == {"vanilla", "gradientmix"} and set(rows8) == {"vanilla", "dreg"}
    assert rows1["gradientmix"].group.lr == 0.05 and rows1["gradientmix"].cost == pytest.approx(1.5)
    gap = gap_closed(setup, rows1["gradientmix"].group)  # against 512 and vanilla on the same 8 workers
    assert gap is not None and gap.reference_batch == 512
    assert gap.value == pytest.approx((0.72 - 0.64) / (0.80 - 0.64))
    assert gap_closed(setup, rows8["dreg"].group).value == pytest.approx((0.66 - 0.62) / (0.80 - 0.62))
    with pytest.raises(ValueError):  # which of the two 4096 tables is meant must be said
        rows_of(setup, 4096)

    text = write_report([root, gm], tmp_path / "rep", say=lambda _: None, figures=False).read_text()
    for heading, method, gap_text in (
            ("## Batch size 4096 (accumulation=1, workers=8)", "gradientmix", "+50% (1 seed)"),
            ("## Batch size 4096 (accumulation=8, workers=1)", "dreg", "+22% (1 seed)")):
        header, rows = _table(text, heading)
        assert set(rows) == {"vanilla", method}
        assert rows[method][header.index("gap to vanilla at 512 closed (test, 95% CI)")] == gap_text
    assert "## Batch size 512 (accumulation=1, workers=1)" in text
    assert "| gradientmix | 4096 (accumulation=1, workers=8) | 0.025: 66.00; **0.05: 72.00**; 0.1: 60.00 |" in text
    assert "| vanilla | 4096 (accumulation=8, workers=1) | **0.05: 62.00**; 0.1: 58.00 |" in text
    _, runs_rows = _table(text, "## Runs")
    assert len(runs_rows) == 8  # every run is listed


def test_the_runs_table_names_each_run_by_its_sweep_when_sweeps_share_run_names(tmp_path: Path) -> None:
    # LARS's and LAMB's warmup grids both name a cell warmup_epochs2_lr...: without its folder the
    # runs table would list two rows nobody can tell apart.
    lars, lamb = tmp_path / "study_lars", tmp_path / "study_lamb"
    for root, opt, acc in ((lars, "lars", 0.70), (lamb, "lamb", 0.75)):
        plant_run(root, "warmup_epochs2_lr0.1", method="vanilla", batch=4096, curve=[0.5, acc], test_acc=acc,
                  extra=[f"optim.name={opt}", "optim.warmup_epochs=2"])
    text = write_report([lars, lamb], tmp_path / "rep", say=lambda _: None, figures=False).read_text()
    header, rows = _table(text, "## Runs")
    assert set(rows) == {"`study_lamb/warmup_epochs2_lr0.1`", "`study_lars/warmup_epochs2_lr0.1`"}
    assert rows["`study_lamb/warmup_epochs2_lr0.1`"][header.index("test acc (%)")] == "75.00"

    single = write_report([lars], tmp_path / "one", say=lambda _: None, figures=False).read_text()
    assert set(_table(single, "## Runs")[1]) == {"`warmup_epochs2_lr0.1`"}  # one sweep: names as they are


def test_a_run_copied_into_two_sweep_folders_counts_once(tmp_path: Path) -> None:
    # The study reuses stage 0's 40-epoch run as the reference's cell: one run, in two folders.
    import shutil

    from dreg_dist.report.runs import drop_copies

    first = plant_run(tmp_path / "horizon", "ep40", method="vanilla", lr=0.4, curve=[0.5, 0.7], test_acc=0.7)
    copy = tmp_path / "ref" / "vanilla_lr0.4"
    shutil.copytree(first, copy)
    config = copy / "config.yaml"
    config.write_text(config.read_text().replace(str(first), str(copy)))
    rerun = plant_run(tmp_path / "ref", "vanilla_again", method="vanilla", lr=0.4, curve=[0.5, 0.6], test_acc=0.6)
    said: list[str] = []
    kept = drop_copies([*load_runs(tmp_path / "horizon"), *load_runs(tmp_path / "ref")], say=said.append)
    assert [r.path for r in kept] == [first, rerun]  # a run of the same config with its own log is kept
    assert said == [f"report: {copy} is a copy of {first}: counted once"]
    text = write_report([tmp_path / "horizon", tmp_path / "ref"], tmp_path / "out", say=lambda _: None,
                        figures=False).read_text()
    assert "| vanilla | 0.4 | 0, 0 |" in text  # two seed-0 runs (the rerun), not three


def test_time_spent_is_each_runs_median_epoch_times_its_epochs_per_folder(tmp_path: Path) -> None:
    # A run paused for an hour in its third epoch (its machine lent to tests) counts its median
    # epoch, not its wall time; runs of a folder add up; a run that did not finish is not timed.
    root = tmp_path / "runs"
    plant_run(root / "lr", "vanilla", method="vanilla", curve=[0.5, 0.6], test_acc=0.5, wall=240.0)
    paused = plant_run(root / "lr", "sam", method="sam", curve=[0.5, 0.6, 0.65, 0.7], test_acc=0.5, wall=3780.0)
    log = [json.loads(x) for x in (paused / "metrics.jsonl").read_text().splitlines()]
    for rec, t in zip((r for r in log if r["kind"] == "val"), (60.0, 120.0, 3720.0, 3780.0)):
        rec["time"] = t
    (paused / "metrics.jsonl").write_text("".join(json.dumps(x) + "\n" for x in log))
    plant_run(root / "gm", "gradientmix", method="gradientmix", curve=[0.5, 0.6], test_acc=0.5, wall=600.0,
              workers=8)
    plant_run(root / "gm", "unfinished", method="vanilla", curve=[0.5], test_acc=0.5, finished=False)
    report = write_report([root / "lr", root / "gm"], tmp_path / "out", figures=False).read_text()
    header, rows = _table(report, "## Time spent")
    assert header == ["folder", "runs", "processes a run", "minutes (sum)", "minutes a run"]
    # sam: median of (60, 60, 3600) s an epoch is 60 s, x 4 epochs = 4 minutes; vanilla 240 s / 2 epochs x 2
    assert rows["`lr`"] == ["`lr`", "2", "1", "8", "4-4"]
    assert rows["`gm`"] == ["`gm`", "1", "8", "10", "10-10"]
    assert "In all: 18 run-minutes (0.3 run-hours)." in report
