"""Sizes, sections and their shares of the time: part of ``bench/device_check.py`` (not a script)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from _common import REPO

METHODS = ["vanilla", "dreg", "gradnorm", "fisher", "sam", "extragradient", "gradientmix"]
SECTIONS = ["smoke", "dreg_overhead", "trainer_vs_bare", "input_pipeline", "memory", "time_to_accuracy"]
TITLES = {
    "smoke": "1. Smoke run of every method through the trainer",
    "dreg_overhead": "2. DReg step overhead over vanilla, next to the FLOP floor",
    "trainer_vs_bare": "3. Trainer vs bare loop",
    "input_pipeline": "4. Data path alone vs what the model consumes",
    "memory": "5. Peak memory, DReg over vanilla",
    "time_to_accuracy": "6. Time to accuracy, vanilla vs DReg (ResNet18, CIFAR-10, global batch 4096)",
}
SHARES = {"smoke": 0.45, "dreg_overhead": 0.17, "trainer_vs_bare": 0.06, "input_pipeline": 0.03, "memory": 0.06,
          "time_to_accuracy": 0.23}
"""Each section's part of the time: of the time left when it starts, it may take its share
over the sum of its own and the later sections' shares, so that time an early section did
not use goes to the later ones in proportion. The last section takes all that is left.
Guesses for an H200 (no GPU was at hand when they were set): the smoke section holds 11
trainer launches, two of them compiling; resnet18 at 4096 should get ~10 epochs in ~110 s."""
DEFAULT_CIFAR_ROOT = REPO.parent / "shared" / "data"
METHOD_NOTES = {
    "gradientmix": "1 worker: a plain averaging step (no other worker to mix with)",
    "extragradient": "1 worker: the local extrapolation gradient is the global one",
    "sam": "1 worker: m-sharpness with m = the whole batch",
}
OUT_OF_TIME = "skipped: out of time"


class SectionTimeout(BaseException):
    """Raised by the alarm at a section's deadline (BaseException: no ``except Exception``
    in benchmark code may swallow it)."""



# --------------------------------------------------------------------------- sizes
@dataclass
class Plan:
    """Sizes of one profile: ``gpu`` (CUDA, the real check), ``quick`` (CI), ``cpu``."""

    profile: str
    amp: str
    """Autocast of the benchmark sections (the smoke runs set their own)."""
    channels_last: bool
    smoke_arch: str
    smoke_batch: int
    smoke_steps: int
    smoke_log_every: int
    smoke_eval_size: int
    smoke_timeout_s: float
    smoke_compile: bool
    smoke_min_s: float
    """Least time a smoke run is started with (else: out of time)."""
    compile_min_s: float
    archs: list[str]
    batch: int
    overhead_round_budget_s: float
    overhead_steps_per_round: int
    overhead_rounds: int
    overhead_max_rounds: int
    overhead_compile: bool
    overhead_min_s: float
    trainer_arch: str
    trainer_batch: int
    trainer_steps: int
    trainer_pairs: int
    input_models: str
    input_batch: int
    input_rounds: int
    input_data_batches: int
    input_model_steps: int
    input_synthetic_size: int
    """Training images of the synthetic stand-in when there is no CIFAR-10 copy."""
    memory_repeats: int
    memory_min_s: float
    tta_arch: str
    tta_batch: int
    tta_synthetic: bool
    tta_fixed_epochs: Optional[int]
    """Quick profile: this many epochs instead of what fits."""
    tta_max_epochs: int
    tta_startup_s: float
    """Fallback estimate of a trainer launch's fixed cost (start, data load, test, export)."""
    notes: list[str] = field(default_factory=list)


def make_plan(device: str, quick: bool) -> Plan:
    if quick:
        return Plan(
            profile="quick", amp="bf16" if device == "cuda" else "none", channels_last=device == "cuda",
            smoke_arch="cnn_tiny", smoke_batch=32, smoke_steps=6, smoke_log_every=2, smoke_eval_size=32,
            smoke_timeout_s=120.0, smoke_compile=False, smoke_min_s=5.0, compile_min_s=60.0,
            archs=["cnn_tiny"], batch=8, overhead_round_budget_s=0.5, overhead_steps_per_round=1, overhead_rounds=2,
            overhead_max_rounds=3, overhead_compile=False, overhead_min_s=3.0,
            trainer_arch="cnn_tiny", trainer_batch=8, trainer_steps=40, trainer_pairs=1,
            input_models="cnn_tiny", input_batch=32, input_rounds=2, input_data_batches=10, input_model_steps=1,
            input_synthetic_size=2048, memory_repeats=1, memory_min_s=5.0,
            tta_arch="cnn_tiny", tta_batch=64, tta_synthetic=True, tta_fixed_epochs=2, tta_max_epochs=2,
            tta_startup_s=6.0,
            notes=["--quick: tiny sizes that only exercise the code paths; the figures mean nothing",
                   "--quick: train.compile is not run (compilation alone takes longer than the whole check)"],
        )
    if device == "cuda":
        return Plan(
            profile="gpu", amp="bf16", channels_last=True,
            smoke_arch="resnet18", smoke_batch=512, smoke_steps=30, smoke_log_every=10, smoke_eval_size=512,
            smoke_timeout_s=150.0, smoke_compile=True, smoke_min_s=15.0, compile_min_s=45.0,
            archs=["resnet18", "vgg16", "mobilenet_v2"], batch=512, overhead_round_budget_s=4.0,
            overhead_steps_per_round=10, overhead_rounds=5, overhead_max_rounds=30, overhead_compile=True,
            overhead_min_s=8.0,
            trainer_arch="resnet18", trainer_batch=512, trainer_steps=80, trainer_pairs=2,
            input_models="resnet18", input_batch=512, input_rounds=5, input_data_batches=50, input_model_steps=5,
            input_synthetic_size=20000, memory_repeats=1, memory_min_s=10.0,
            tta_arch="resnet18", tta_batch=4096, tta_synthetic=False, tta_fixed_epochs=None, tta_max_epochs=40,
            tta_startup_s=25.0,
        )
    # A full run on CPU: the sizes of the CPU benchmarks (bench/README.md); most sections
    # will not fit in 8 minutes on 2 cores and say so.
    return Plan(
        profile="cpu", amp="none", channels_last=False,
        smoke_arch="cnn_small", smoke_batch=64, smoke_steps=30, smoke_log_every=10, smoke_eval_size=64,
        smoke_timeout_s=240.0, smoke_compile=True, smoke_min_s=10.0, compile_min_s=90.0,
        archs=["resnet18", "vgg16", "mobilenet_v2"], batch=32, overhead_round_budget_s=10.0,
        overhead_steps_per_round=1, overhead_rounds=3, overhead_max_rounds=10, overhead_compile=True,
        overhead_min_s=20.0,
        trainer_arch="cnn_small", trainer_batch=32, trainer_steps=40, trainer_pairs=1,
        input_models="cnn_small", input_batch=32, input_rounds=3, input_data_batches=50, input_model_steps=1,
        input_synthetic_size=20000, memory_repeats=1, memory_min_s=20.0,
        tta_arch="cnn_tiny", tta_batch=4096, tta_synthetic=False, tta_fixed_epochs=None, tta_max_epochs=10,
        tta_startup_s=15.0,
    )

