"""The run configuration: one small dataclass per component.

Every key a YAML file may set is a field here, with its default and a one-line
meaning. ``dreg_dist.config.load`` turns YAML plus ``dotted.key=value`` overrides
into a :class:`Config`, rejecting unknown keys and wrong types before any worker
starts. Single-section rules (ranges, divisibility) live in ``dreg_dist.config.validate``;
checks that need several components (does the model have the layer a method modifies,
is the data there) in ``dreg_dist.train.preflight``. A method's hyperparameters are its own dataclass
(``Method.Config`` in ``dreg_dist/methods/<name>/``), not a field here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, Optional

from dreg_dist.methods import DEFAULT as DEFAULT_METHOD


@dataclass
class ModelConfig:
    arch: str = "resnet18"
    """Registry name: resnet18 | vgg16 | mobilenet_v2 | cnn_small | cnn_small_gn | cnn_tiny (CIFAR forms)
    or any torchvision.models classifier (``resnet50``; ``torchvision.resnet18`` for the
    ImageNet form of a name the CIFAR registry also uses)."""
    num_classes: int = 10
    zero_init_residual: bool = False
    """Zero-initialize the last BN gamma of each residual block (Goyal et al. 2017)."""


@dataclass
class DataConfig:
    name: Literal["cifar10", "cifar100", "imagefolder", "shards", "synthetic"] = "cifar10"
    root: str = "data"
    """Folder that contains cifar-10-batches-py/ or cifar-100-python/ (as torchvision), an
    ImageNet-layout tree with train/ and val/ for imagefolder, or the OUT_DIR of
    ``dreg-shards IMAGEFOLDER_ROOT OUT_DIR`` (index.json + tar shards) for shards. Unused
    for synthetic."""
    val_size: int = 5000
    """Images held out of the training set for validation and best-path selection."""
    download: bool = False
    """Fetch CIFAR when it is missing (needs internet; never used by tests)."""
    augment: bool = True
    """Standard augmentation: pad-4 random crop + horizontal flip (CIFAR), random resized
    crop + flip (imagefolder, shards)."""
    image_size: int = 224
    """Training crop size for imagefolder and shards; CIFAR and synthetic images are 32x32."""
    num_workers: int = 4
    """DataLoader workers for imagefolder and shards (CIFAR and synthetic are served from
    memory)."""
    decoder: Literal["auto", "pil", "pil_draft", "torchvision", "cuda"] = "auto"
    """JPEG decoder for shards. auto = cuda on a CUDA device (nvjpeg, batched; crop, flip
    and normalization on the GPU), else torchvision (libjpeg-turbo). pil is bit-identical
    to imagefolder; pil_draft decodes at reduced size when the crop allows."""
    skip_bad_samples: bool = False
    """imagefolder and shards: leave out samples that do not decode (with their labels),
    count them and report the count on stderr, instead of stopping with an error."""
    synthetic_train_size: int = 4096
    synthetic_test_size: int = 1024
    synthetic_noise: float = 1.0
    """Noise level of the synthetic images; higher is harder."""
    on_device: Optional[bool] = None
    """Keep in-memory datasets resident on the accelerator and augment there. null = yes on
    CUDA, no on CPU."""


@dataclass
class TrainConfig:
    epochs: int = 90
    global_batch_size: int = 1024
    """Images per optimizer step summed over all workers and accumulation micro-steps."""
    accumulation_steps: int = 1
    """Micro-batches per worker per optimizer step (``no_sync`` on all but the last); each
    worker's micro-batch is B / (K x accumulation_steps). Leave at 1 when
    ``micro_batch_size`` is set."""
    micro_batch_size: Optional[int] = None
    """Images per worker per forward. When set, the accumulation steps are derived at
    start-up as B / (K x micro_batch_size), so the same global batch runs on every K that
    divides B / micro_batch_size (elastic jobs, resuming on another K); null = use
    ``accumulation_steps``."""
    seed: int = 0
    sync_bn: bool = False
    """Convert BatchNorm to SyncBatchNorm so statistics cover the global micro-batch (CUDA
    only; not with ``bn_group_size``)."""
    bn_group_size: Optional[int] = None
    """Ghost batch norm: BatchNorm batch statistics over fixed groups of this many
    consecutive samples of the global batch, so the forward and gradients are the same on
    any K and accumulation (Hoffer et al. 2017). Must divide each worker's micro-batch.
    Running statistics are updated once per step with the mean of all groups' statistics
    (all-reduced), identical on all ranks and any K. null = plain per-micro-batch BN."""
    label_smoothing: float = 0.0
    grad_clip_norm: Optional[float] = None
    """Clip the global gradient norm to this value (after unscaling)."""
    amp: Literal["none", "bf16", "fp16"] = "none"
    channels_last: Optional[bool] = None
    """null = on for CUDA, off on CPU."""
    compile: bool = False
    """Wrap the model in torch.compile."""
    grad_compression: Literal["none", "fp16", "bf16"] = "none"
    """DDP gradient all-reduce in fp16/bf16 (PyTorch's compress hooks; half the bytes, update stays fp32); multi-worker only."""
    eval_every_epochs: int = 1
    eval_every_steps: Optional[int] = None
    """Also validate every N optimizer steps inside an epoch (steps-to-accuracy studies at small
    batches; a best checkpoint may then be mid-epoch, its epoch the epochs completed)."""
    eval_batch_size: int = 1024
    """Validation/test images per worker per forward."""
    resume: str = "auto"
    """auto: continue from RUN_DIR/checkpoints/last.pt when present; never; or a checkpoint path."""
    stop_after_steps: Optional[int] = None
    """End the job cleanly after this many optimizer steps (the schedule still spans
    ``epochs``), writing last.pt; a later launch resumes. For time-boxed jobs."""
    on_nonfinite: Literal["stop", "skip"] = "stop"
    """What to do when the loss is NaN/Inf on any rank."""
    step_guard: Literal["auto", "host", "device"] = "auto"
    """Where the per-step non-finite and preemption decision is made: host reads the one
    all-reduced flag pair every step; device undoes a bad update on the GPU and lets the host
    learn of it two steps later (no host sync per step). auto = device on CUDA, host on CPU.
    Either way a non-finite update is never applied nor checkpointed."""
    device: Literal["auto", "cpu", "cuda"] = "auto"


@dataclass
class OptimConfig:
    name: Literal["sgd", "lars", "lamb"] = "sgd"
    lr: float = 0.1
    """Peak learning rate for a global batch of ``base_batch_size``; scaled by ``lr_scaling``."""
    base_batch_size: int = 256
    lr_scaling: Literal["linear", "sqrt", "none"] = "linear"
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 5e-4
    decay_norm_and_bias: bool = False
    """Apply weight decay to norm weights and biases too (off by default, Goyal et al.)."""
    warmup_epochs: float = 5.0
    warmup_start_factor: float = 0.1
    """Warmup starts at this fraction of the peak learning rate."""
    schedule: Literal["cosine", "step", "multistep", "poly", "constant"] = "cosine"
    milestones: list[int] = field(default_factory=lambda: [30, 60, 80])
    """Epochs at which step/multistep decay multiplies the rate by ``gamma``."""
    gamma: float = 0.1
    poly_power: float = 2.0
    min_lr_factor: float = 0.0
    """Final learning rate as a fraction of the peak (cosine and poly)."""
    trust_coefficient: float = 0.001
    """LARS eta."""
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    """LAMB moment coefficients."""
    eps: float = 1e-6


@dataclass
class LogConfig:
    every_steps: int = 20
    tensorboard: bool = True
    progress: Literal["auto", "bar", "lines", "off"] = "auto"
    """Console progress: auto = a live bar on a TTY, plain lines otherwise; off = no progress
    lines (epoch results and warnings still print)."""
    noise_scale: bool = True
    """Measure the gradient noise scale B_simple every step (McCandlish et al. 2018;
    ``dreg_dist/train/noise.py``): ``train/noise_scale`` and the batch-size advice."""
    noise_scale_ema: float = 0.95
    """Per-step decay of the moving averages of |G|^2 and tr(Sigma) (bias-corrected)."""


@dataclass
class CheckpointConfig:
    every_steps: Optional[int] = None
    """Also checkpoint every N optimizer steps (besides every epoch)."""
    keep_last: int = 2
    """Step checkpoints to keep besides last.pt and best.pt."""


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    method_config: Any = None
    """The selected method's hyperparameters (its own dataclass), read from and written to
    the method's config section (``dreg:``, ``methods.<name>:``); not a YAML key itself."""
    log: LogConfig = field(default_factory=LogConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    method: str = DEFAULT_METHOD
    """Training method, a name in the method registry (see dreg_dist/methods/ and the README's
    method table); unknown names fail with a suggestion."""
    run_dir: Optional[str] = None
    """Where outputs go; default runs/<config file stem>."""


NON_RESULT_KEYS: tuple[str, ...] = (
    "run_dir", "log.", "checkpoint.", "train.resume", "train.stop_after_steps", "train.device", "train.step_guard",
    "train.eval_batch_size", "train.eval_every_epochs", "train.eval_every_steps",
    "data.root", "data.num_workers", "data.download",
    "data.on_device",
)
"""Dotted keys (a trailing dot: whole sections) that never change what a run computes: where
it runs and writes, how often it logs and checkpoints, when it stops. A run may resume with
other values, and reports ignore them. A method lists its own in its description (``non_result_keys``)."""
