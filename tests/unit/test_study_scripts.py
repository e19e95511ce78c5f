"""The second head-to-head's stage scripts (docs/results/cifar10_h2h2/*.sh): every follow-up grid
they write is asked of ``launch/report.py`` with flags it accepts, from run folders that exist, to
a grid file under the grids folder, and follow-ups are written for real from a copy of the
committed records. The sweeps themselves are not run here: they are the study."""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

import yaml

from ..conftest import REPO, launch_script

STUDY = REPO / "docs/results/cifar10_h2h2"
WRITERS = ("edge_gm", "warmup_gm", "edge_rest tiny", "edge_rest tiny_gm", "seeds", "seeds34", "steps", "transfer",
           "base_best", "edge_base")


@pytest.fixture
def runs(tmp_path: Path) -> Path:
    """A copy of the study's committed records, without the follow-ups that ran already (the
    writers would rightly refuse to rerun their seeds), so that nothing is written beside them."""
    root = tmp_path / "runs"
    shutil.copytree(STUDY / "runs", root)
    for done in root.glob("*_seeds*"):
        shutil.rmtree(done)
    return root


def _recording_python(record: Path) -> str:
    """Bash that makes `python` a function writing its arguments to ``record`` instead of running."""
    return f'python() {{ printf "%s\\n" "$(printf "%q " "$@")" >> {shlex.quote(str(record))}; }}; '


def _bash(script: str, runs: Path, grids: Path, *, record: Path | None = None) -> subprocess.CompletedProcess:
    # With ``record`` set, the writers' commands are written down as they would run, without
    # loading records 27 times.
    shim = _recording_python(record) if record else ""
    env = f"R={shlex.quote(str(runs))} C={shlex.quote(str(grids))} S=0"
    return subprocess.run(["bash", "-c", f"{env}; {shim}. {STUDY}/lib.sh; {script}"], cwd=REPO, text=True,
                          capture_output=True, timeout=120)


def test_the_stage_scripts_parse() -> None:
    for script in sorted(STUDY.glob("*.sh")):
        done = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
        assert done.returncode == 0, (script.name, done.stderr)


def test_every_follow_up_the_stages_write_is_a_valid_report_command(runs: Path, tmp_path: Path) -> None:
    report = launch_script("report.py")
    record = tmp_path / "commands"
    done = _bash("; ".join(WRITERS), runs, tmp_path / "grids", record=record)
    assert done.returncode == 0, done.stderr
    commands = [shlex.split(line) for line in record.read_text().splitlines()]
    # each stage-1 family with records (and the reference) gets seeds, the families 3-4 seeds and
    # matched steps, then 4 transfer grids per family and 2 re-tuned; GradientMix's join once it ran
    assert len(commands) >= 5 + 4 + 4 + 18
    written = set()
    for argv in commands:
        assert argv[0] == "launch/report.py", argv
        args = report.build_parser().parse_args(argv[1:])
        (kind,) = report.check(args)  # exactly one follow-up, with flags that go together
        out = Path(getattr(args, kind))
        assert out.parent == tmp_path / "grids" and out.name.startswith("cifar10_h2h2_"), out
        if kind == "transfer_grid" and "_lars_" not in out.name and "_lamb_" not in out.name \
                and "retune" not in out.name:
            assert args.best == 1 and args.against, argv  # the best of (a) at its best variant only
        for run_dir in (*args.runs, *(args.against or ())):
            assert Path(run_dir).is_dir(), run_dir
        written.add(out.name)
    assert {"cifar10_h2h2_tiny_ref_seeds.yaml", "cifar10_h2h2_tiny_lamb_x8192_sqrt_steps.yaml",
            "cifar10_h2h2_tiny_x8192_retune.yaml", "cifar10_h2h2_tiny_seeds34.yaml"} <= written
    assert not any("tiny_penalties_seeds" in name for name in written)  # the penalties keep their one run


def test_a_follow_up_is_written_once_from_the_records(runs: Path, tmp_path: Path) -> None:
    grids = tmp_path / "grids"
    grids.mkdir()
    done = _bash("follow tiny_ref_seeds tiny_ref --seed-grid --seeds 1,2", runs, grids)
    assert done.returncode == 0, done.stderr
    path = grids / "cifar10_h2h2_tiny_ref_seeds.yaml"
    grid = yaml.safe_load(path.read_text())
    assert grid["axes"]["train.seed"] == [1, 2] and grid["lr_grid"] == [0.4]  # the reference's selection
    path.write_text("# kept\n")
    assert _bash("follow tiny_ref_seeds tiny_ref --seed-grid --seeds 1,2", runs, grids).returncode == 0
    assert path.read_text() == "# kept\n"  # an earlier launch's grid is never rewritten
    done = _bash("follow nothing_seeds no_such_grid --seed-grid --seeds 1", runs, grids)
    assert done.returncode == 0 and not (grids / "cifar10_h2h2_nothing_seeds.yaml").exists()


def test_a_follow_up_with_nothing_to_run_keeps_that_answer_for_a_resume(runs: Path, tmp_path: Path) -> None:
    # LARS's selection is bracketed after its one extension. A resume of stage 1 in a later machine
    # has stage 2's folders beside it, which an edge writer would read: it must not ask again.
    grids = tmp_path / "grids"
    grids.mkdir()
    done = _bash("follow tiny_lars_edge2 tiny_lars --edge-grid", runs, grids)
    assert done.returncode == 0, done.stderr
    assert [p.name for p in grids.iterdir()] == ["cifar10_h2h2_tiny_lars_edge2.none"]
    assert "nothing to extend" in (grids / "cifar10_h2h2_tiny_lars_edge2.none").read_text()
    record = tmp_path / "commands"
    assert _bash("follow tiny_lars_edge2 tiny_lars --edge-grid", runs, grids, record=record).returncode == 0
    assert not record.exists()  # not asked again
    # an error is not an answer: nothing is kept, and the next launch asks again
    done = _bash("follow tiny_lars_knob tiny_lars --knob-grid --seeds 0 --set optim.warmup_epoch=5", runs, grids)
    assert done.returncode == 0 and "check its spelling" in done.stdout
    assert not list(grids.glob("cifar10_h2h2_tiny_lars_knob*"))


def test_the_seeds_of_a_selection_tuned_in_its_warmup_folder_run_its_warmup(runs: Path, tmp_path: Path) -> None:
    # Vanilla's selection at 4096 came from cifar10_h2h2_tiny_warmup (5 warmup epochs); the
    # family's first grid runs 2. Its seeds must run 5, each other variant its own selection's one.
    from dreg_dist.sweep.grid import expand_grid, load_grid

    grids = tmp_path / "grids"
    grids.mkdir()
    done = _bash("follow tiny_seeds tiny --seed-grid --seeds 1", runs, grids)
    assert done.returncode == 0, done.stderr
    cells = expand_grid(load_grid(grids / "cifar10_h2h2_tiny_seeds.yaml"))
    warmups = {(c.method, c.values.get("dreg.form"), c.values.get("optim.warmup_epochs")) for c in cells}
    assert ("vanilla", None, 5.0) in warmups and ("vanilla", None, 2.0) not in warmups
    variants = [(m, form) for m, form, _ in warmups]
    assert len(variants) == len(set(variants)) >= 4  # one warmup per selection, never both
    assert ("dreg", "literal", 2.0) in warmups  # the paper form only ever ran 2


def test_a_warmup_control_selection_at_its_variants_top_rate_gets_the_next_rate(runs: Path, tmp_path: Path) -> None:
    # SAM tried 0.025-0.1 at 2 warmup epochs; its 5-warmup control runs 0.1 alone. Should that one
    # be SAM's best, the selection is at the top of its variant's rates and stage 2 extends it at
    # its own warmup before any seed grid reads the family.
    import json

    from dreg_dist.sweep.grid import expand_grid, load_grid

    for done in runs.glob("cifar10_h2h2_tiny_warmup_rest*"):  # the study's own control: this test plants one
        shutil.rmtree(done)
    source = runs / "cifar10_h2h2_tiny" / "sam_rho0.05_lr0.1"
    planted = runs / "cifar10_h2h2_tiny_warmup_rest" / "sam_rho0.05_warmup_epochs5_lr0.1"
    shutil.copytree(source, planted)
    config = planted / "config.yaml"
    config.write_text(config.read_text().replace("warmup_epochs: 2.0", "warmup_epochs: 5.0")
                      .replace(str(source.relative_to(runs)), str(planted.relative_to(runs))))
    lines = []
    for line in (planted / "metrics.jsonl").read_text().splitlines():
        rec = json.loads(line)
        if rec.get("kind") == "val":
            rec["acc"] = rec["best_acc"] = min(1.0, rec["acc"] + 0.02)
        lines.append(json.dumps(rec))
    (planted / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    summary = json.loads((planted / "summary.json").read_text())
    summary["best"]["val_acc"]["model"] += 0.02
    (planted / "summary.json").write_text(json.dumps(summary))
    grids = tmp_path / "grids"
    grids.mkdir()
    done = _bash("edge_rest tiny", runs, grids)
    assert done.returncode == 0, done.stderr
    cells = expand_grid(load_grid(grids / "cifar10_h2h2_tiny_warmup_rest_edge.yaml"))
    sam = [(c.values.get("optim.lr"), c.values.get("optim.warmup_epochs"), c.values.get("methods.sam.rho"))
           for c in cells if c.method == "sam"]
    assert sam == [(0.2, 5.0, 0.05)]
    # vanilla's selection (5 warmup epochs, 0.1 of 0.025-0.2) is bracketed: it gets none
    assert "vanilla" not in {c.method for c in cells}
    assert all(c.values.get("optim.warmup_epochs") == 5.0 for c in cells)  # each at its selection's warmup
    header = (grids / "cifar10_h2h2_tiny_warmup_rest_edge.yaml").read_text()
    assert "sam (rho=0.05, warmup=5.0) batch 4096: best at lr 0.1 of 0.025, 0.05, 0.1; adds 0.2" in header


def test_stage_five_moves_the_one_best_method_of_a_to_cnn_base(runs: Path, tmp_path: Path) -> None:
    # Whichever method the records rank first (LARS, LAMB and ghost BN count as methods; plain
    # vanilla has its own cnn_base grid), one family writes the grid: that method's selection alone,
    # at half, one and two times its rate, on cnn_base for 20 epochs.
    from dreg_dist.sweep.grid import expand_grid, load_grid

    grids = tmp_path / "grids"
    grids.mkdir()
    done = _bash("base_best", runs, grids)
    assert done.returncode == 0, done.stderr
    assert [p.name for p in grids.iterdir()] == ["cifar10_h2h2_base_best.yaml"]
    cells = expand_grid(load_grid(grids / "cifar10_h2h2_base_best.yaml"))
    assert len(cells) == 3
    assert all("model.arch=cnn_base" in c.overrides and "train.epochs=20" in c.overrides for c in cells)
    variants = {tuple(sorted((k, str(v)) for k, v in c.values.items() if k not in ("optim.lr",))) for c in cells}
    assert len(variants) == 1  # one method variant, its knobs and warmup as selected
    rates = sorted(float(c.values["optim.lr"]) for c in cells)
    assert rates[1] == pytest.approx(2 * rates[0]) and rates[2] == pytest.approx(4 * rates[0])
    picked = dict(next(iter(variants)))
    assert picked.get("method") != "vanilla" or picked.get("optim.name") or picked.get("train.bn_group_size")


def _guard(script: Path) -> re.Pattern:
    return re.compile(re.search(r"pgrep -f '([^']+)'", script.read_text()).group(1))


def test_stage_two_can_start_beside_stage_one_and_neither_twice() -> None:
    # The README starts stage 1 and then stage 2 at once, so stage 2's guard must not see stage 1
    # (whose GradientMix waiter names stage 2's marker); stage 1's sees both, as it clears the
    # markers stage 2 waits for. The processes a start script leaves are its lines after the guard, with the folder filled in;
    # the guard is pgrep's extended regex, which Python's re reads the same for these patterns.
    def launched(name: str) -> str:
        text = (STUDY / name).read_text()
        return text[text.index("mkdir -p"):].replace("$HERE", str(STUDY)).replace("$R", "/runs")

    stage1, stage2 = _guard(STUDY / "start_stage1.sh"), _guard(STUDY / "start_stage2.sh")
    assert stage2.search(launched("start_stage2.sh")) and not stage2.search(launched("start_stage1.sh"))
    assert stage1.search(launched("start_stage1.sh")) and stage1.search(launched("start_stage2.sh"))


def test_the_report_reads_every_cnn_tiny_folder_by_name_and_nothing_else(tmp_path: Path) -> None:
    record = tmp_path / "command"
    shim = _recording_python(record) + "export -f python; "
    done = subprocess.run(["bash", "-c", f"{shim}OUT={shlex.quote(str(tmp_path / 'out'))} bash {STUDY}/report.sh"],
                          cwd=REPO, text=True, capture_output=True, timeout=60)
    assert done.returncode == 0, done.stderr
    (argv,) = [shlex.split(line) for line in record.read_text().splitlines()]
    args = launch_script("report.py").build_parser().parse_args(argv[1:])
    read = {Path(r).name for r in args.runs}
    committed = {p.name for p in (STUDY / "runs").iterdir() if p.is_dir()}
    assert read == {n for n in committed if n.startswith("cifar10_h2h2_tiny")}  # every stage folder of cnn_tiny
    assert "cifar10_h2h2_horizon" in committed and args.out == str(tmp_path / "out") and args.title


def test_the_pool_runs_each_unfinished_cell_once_on_two_workers(tmp_path: Path) -> None:
    # Stage 5's cells are few and uneven: pool.sh hands them out one at a time. `python` is a shim
    # that answers `--dry-run` with a sweep's listing and records the cells it is asked to run.
    grids, runs, record = tmp_path / "grids", tmp_path / "runs", tmp_path / "ran"
    grids.mkdir()
    runs.mkdir()
    for name in ("base_a", "base_b"):
        (grids / f"cifar10_h2h2_{name}.yaml").write_text("name: x\n")
    listing = {"base_a": "   0  finished   a0  optim.lr=0.1\n   1  pending    a1  optim.lr=0.2\n2 cells",
               "base_b": "   0  partial    b0  optim.lr=0.1\n   1  pending    b1  optim.lr=0.2\n"
                         "   2  pending    b2  optim.lr=0.4\n3 cells"}
    shim = ("python() { case \"$*\" in *--dry-run*) case \"$*\" in "
            + " ".join(f"*{name}.yaml*) printf '%s\\n' {shlex.quote(text)};;" for name, text in listing.items())
            + f" esac;; *) sleep 0.2; printf '%s\\n' \"$*\" >> {shlex.quote(str(record))};; esac; }}; export -f python; ")
    env = f"R={shlex.quote(str(runs))} C={shlex.quote(str(grids))}"
    done = subprocess.run(["bash", "-c", f"{shim}{env} bash {STUDY}/pool.sh base_a base_missing base_b"],
                          cwd=REPO, text=True, capture_output=True, timeout=60)
    assert done.returncode == 0, done.stderr
    ran = [(Path(a[a.index("--grid") + 1]).stem, a[a.index("--cell-index") + 1])
           for a in (line.split() for line in record.read_text().splitlines())]
    assert sorted(ran) == [("cifar10_h2h2_base_a", "1"), ("cifar10_h2h2_base_b", "0"), ("cifar10_h2h2_base_b", "1"),
                           ("cifar10_h2h2_base_b", "2")]  # the finished cell and the count lines are not run
    workers = {line.split()[2] for line in done.stdout.splitlines() if "exit code 0" in line}
    assert workers == {"0:", "1:"}  # both workers took cells
    assert not list(runs.glob(".pool.*"))  # the claims go with the pool
    # a grid of GradientMix's (8 worker processes) is refused before any cell runs
    (grids / "cifar10_h2h2_base_gm.yaml").write_text("axes:\n  method: gradientmix\n")
    record.unlink()
    done = subprocess.run(["bash", "-c", f"{shim}{env} bash {STUDY}/pool.sh base_a base_gm"],
                          cwd=REPO, text=True, capture_output=True, timeout=60)
    assert done.returncode == 2 and "--nproc-per-node 8" in done.stderr and not record.exists()
