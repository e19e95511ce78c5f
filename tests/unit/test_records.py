"""Run records that describe themselves: the report and the sweep read runs without torch or
method code, records of earlier releases are read as they were meant, and the trainer's
``record.json`` round-trips what the method's class and description say."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

from ..conftest import REPO

SIGNALS = REPO / "docs" / "results" / "cifar10_signals" / "runs" / "cifar10_signals"
SUBSET = ["vanilla_lr0.05", "sam_m128_rho0.05_lr0.05", "sam_m128_rho0.1_lr0.05", "extragradient_lr0.05",
          "dreg_projected_r0.5_ceper_path_normper_path_lr0.05"]


def _subset(dest: Path) -> Path:
    for name in SUBSET:
        shutil.copytree(SIGNALS / name, dest / name)
    return dest


def test_report_and_sweep_import_neither_torch_nor_method_code(tmp_path: Path) -> None:
    runs = _subset(tmp_path / "runs")
    script = textwrap.dedent(f"""
        import sys
        from pathlib import Path
        import dreg_dist.report, dreg_dist.sweep
        import dreg_dist.sweep.runner, dreg_dist.report.followup
        from dreg_dist.report.markdown import write_report
        out = write_report(Path({str(runs)!r}), Path({str(tmp_path / 'out')!r}), figures=False, say=lambda s: None)
        text = out.read_text()
        assert "| sam (rho=0.1) |" in text, text[:2000]
        leaked = sorted(m for m in sys.modules if m == "torch" or m.startswith(("torch.", "dreg_dist.methods",
                        "dreg_dist.config", "dreg_dist.train")))
        print("LEAKED", leaked)
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "LEAKED []" in done.stdout, done.stdout


def test_a_run_whose_method_code_is_gone_still_reports(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An old (schema 1) SAM record read with 'sam' renamed away in the registry, and a new
    (schema 2) record of a method no installation has: both keep their labels and signals."""
    from dreg_dist import methods
    from dreg_dist.report.analysis import analyse
    from dreg_dist.report.runs import load_runs
    from dreg_dist.report.signals import signals_of

    registry = {("sharpness" if k == "sam" else k): v for k, v in methods.BUILTIN.items()}
    monkeypatch.setattr(methods, "BUILTIN", registry)
    monkeypatch.setattr(methods, "_classes", {})
    with pytest.raises(methods.ConfigError):
        methods.method_class("sam")

    runs_dir = _subset(tmp_path / "runs")
    gone = runs_dir / "gone_lr0.05"
    shutil.copytree(SIGNALS / "vanilla_lr0.05", gone)
    record = {"schema": 2, "method": "gone", "outputs": {"model": "acc"}, "non_result_keys": ["log."],
              "description": {"name": "gone", "section": "methods.gone", "labels": {"knob": "k"},
                              "report_columns": {"weight_norm": "weight norm"},
                              "report_signals": [{"tag": "loss", "title": "gone loss"}], "defaults": {"knob": 1.0}}}
    (gone / "record.json").write_text(json.dumps(record))
    config = yaml.safe_load((gone / "config.yaml").read_text())
    config.update(method="gone", methods={"gone": {"knob": 2.0}})
    (gone / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))

    runs = load_runs(runs_dir)
    by_name = {r.name: r for r in runs}
    sam = by_name["sam_m128_rho0.1_lr0.05"]
    assert sam.method == "sam" and sam.flat["methods.sam.rho"] == 0.1 and sam.record.schema == 1
    assert sam.description.labels["rho"] == "rho"
    analysis = analyse(runs)
    assert [s.title for s in signals_of(analysis.catalog, "sam")] == ["loss(w + e) - loss(w)"]
    labels = {g.label for s in analysis.setups for g in s.groups}
    assert "sam (rho=0.1)" in labels
    new = by_name["gone_lr0.05"]
    assert new.method == "gone" and new.record.schema == 2 and new.description.report_columns == \
        {"weight_norm": "weight norm"}
    assert [s.title for s in signals_of(analysis.catalog, "gone")] == ["gone loss"]
    assert new.flat["methods.gone.knob"] == 2.0 and analysis.catalog.label("methods.gone.knob") == "k"


def test_the_trainers_record_round_trips(tmp_path: Path) -> None:
    from dreg_dist import methods
    from dreg_dist.config import load_config, run_record, save_config
    from dreg_dist.records import SCHEMA_VERSION, read_record, write_record

    cfg = load_config(REPO / "configs" / "quickstart.yaml", ["method=extragradient", "methods.extragradient.gamma=0.5"],
                      warn=None)
    save_config(cfg, tmp_path / "config.yaml")
    write_record(tmp_path, run_record(cfg))
    record = read_record(tmp_path)
    assert record is not None and record.schema == SCHEMA_VERSION and record.method == "extragradient"
    assert record.description == methods.describe(methods.method_class("extragradient"))
    assert record.description.defaults["gamma_rule"] == "micro_batch"
    assert record.config["methods"]["extragradient"] == {"micro_batch_size": 128, "gamma_rule": "micro_batch",
                                                         "gamma_scale": 1.0, "gamma": 0.5}
    assert json.loads((tmp_path / "record.json").read_text())["outputs"] == {"model": "acc"}
    assert not record.changes_results("log.every_steps") and record.changes_results("methods.extragradient.gamma")
    # A record from a release newer than this one is refused in one line, not misread.
    (tmp_path / "record.json").write_text(json.dumps({"schema": SCHEMA_VERSION + 1}))
    with pytest.raises(methods.ConfigError, match="schema"):
        read_record(tmp_path)


def test_old_records_mean_what_their_release_meant() -> None:
    """A schema-1 SAM record lacks micro_batch_size: it ascended on the whole local batch (None),
    not at today's default of 128."""
    from dreg_dist.records import compat

    old = {"method": "sam", "methods": {"sam_rho": 0.1}, "optim": {"lr": 1}}
    resolved = compat.resolve_config(old)
    assert resolved["methods"]["sam"] == {"rho": 0.1, "micro_batch_size": None}
    assert resolved["optim"]["lr"] == 1.0 and isinstance(resolved["optim"]["lr"], float)
    assert resolved["train"]["epochs"] == compat._FROZEN["methods"]["sam"]["config"]["train"]["epochs"]


def test_descriptions_are_data_with_checked_keys(tmp_path: Path) -> None:
    from dreg_dist.errors import ConfigError
    from dreg_dist.records import Description

    d = Description.from_dict({"labels": {"lam": "lam"}, "report_signals": [
        {"tag": "x", "title": "X", "flag_below": [0.1, "low"]}]}, name="m")
    assert Description.from_dict(d.to_dict()) == d and d.report_signals[0].flag_below == (0.1, "low")
    with pytest.raises(ConfigError, match="unknown key 'lables'.*did you mean 'labels'"):
        Description.from_dict({"lables": {}}, name="m")


def test_check_only_checks_and_descriptions_are_not_class_attributes(monkeypatch: pytest.MonkeyPatch) -> None:
    """check() leaves the method as __init__ built it (what traits.replaces_allreduce reads is the
    config), and a class written with the pre-description attributes is refused in one line."""
    import types

    from dreg_dist import methods

    for name in methods.BUILTIN:
        cls = methods.method_class(name)
        check = cls.check
        with monkeypatch.context() as patch:
            patch.setattr(cls, "check", lambda self, module=None: [])
            method = cls()  # built without its check
        before = dict(vars(method))
        check(method)
        assert vars(method) == before, f"{name}.check() set {set(vars(method)) - set(before)}"
    mix = methods.method_class("gradientmix")
    assert mix(mix.Config(strength=0.0)).traits.replaces_allreduce is False
    assert mix(mix.Config(strength=0.5)).traits.replaces_allreduce is True

    class Old(methods.Method):
        name = "old"
        labels = {"scale": "s"}

    module = types.ModuleType("old_method_module")
    module.Old = Old  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "old_method_module", module)
    monkeypatch.setattr(methods, "_registered", {"old": "old_method_module:Old"})
    monkeypatch.setattr(methods, "_classes", {})
    with pytest.raises(methods.ConfigError, match="sets 'labels' on its class.*description.yaml"):
        methods.method_class("old")


def test_resume_check_reads_old_and_new_records(tmp_path: Path) -> None:
    """A checkpointed run of an earlier release (no record.json, a SAM config without the field
    added since) resumes with the config it meant, and is refused with today's default, which
    would train something else; a run of this release is compared as it was saved."""
    from dreg_dist.config import ConfigError, load_config, run_record, save_config
    from dreg_dist.records import write_record
    from dreg_dist.train.run import prepare_run_dir

    old = tmp_path / "old"
    (old / "checkpoints").mkdir(parents=True)
    (old / "checkpoints" / "last.pt").write_bytes(b"")  # a checkpoint is there: the check runs
    saved = yaml.safe_load((SIGNALS / "sam_m128_rho0.1_lr0.05" / "config.yaml").read_text())
    del saved["methods"]["sam"]["micro_batch_size"]  # as the releases before m-sharpness wrote it
    (old / "config.yaml").write_text(yaml.safe_dump(saved, sort_keys=False))
    base = old / "config.yaml"
    prepare_run_dir(load_config(base, ["methods.sam.micro_batch_size=null"], warn=None), old)
    with pytest.raises(ConfigError, match="differs in methods.sam.micro_batch_size"):
        prepare_run_dir(load_config(base, warn=None), old)

    new = tmp_path / "new"
    (new / "checkpoints").mkdir(parents=True)
    (new / "checkpoints" / "last.pt").write_bytes(b"")
    cfg = load_config(base, warn=None)
    save_config(cfg, new / "config.yaml")
    write_record(new, run_record(cfg))
    prepare_run_dir(load_config(new / "config.yaml", ["log.every_steps=1"], warn=None), new)
    with pytest.raises(ConfigError, match="differs in optim.lr"):
        prepare_run_dir(load_config(new / "config.yaml", ["optim.lr=0.2"], warn=None), new)
