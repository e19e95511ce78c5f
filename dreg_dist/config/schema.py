"""The run configuration: one small dataclass per component.

Every key a YAML file may set is a field here, with its default and a one-line
meaning. ``dreg_dist.config.load`` turns YAML plus ``dotted.key=value`` overrides
into a :class:`Config`, rejecting unknown keys and wrong types before any worker
starts. Cross-field rules (divisibility, existing data root) live in
``dreg_dist.config.validate``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Optional


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
    name: Literal["cifar10", "cifar100", "imagefolder", "synthetic"] = "cifar10"
    root: str = "data"
    """Folder that contains cifar-10-batches-py/ or cifar-100-python/ (as torchvision), or
    an ImageNet-layout tree with train/ and val/ for imagefolder. Unused for synthetic."""
    val_size: int = 5000
    """Images held out of the training set for validation and best-path selection."""
    download: bool = False
    """Fetch CIFAR when it is missing (needs internet; never used by tests)."""
    augment: bool = True
    """Standard augmentation: pad-4 random crop + horizontal flip (CIFAR), random resized
    crop + flip (imagefolder)."""
    image_size: int = 224
    """Training crop size for imagefolder; CIFAR and synthetic images are 32x32."""
    num_workers: int = 4
    """DataLoader workers for imagefolder (CIFAR and synthetic are served from memory)."""
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
    seed: int = 0
    sync_bn: bool = False
    """Convert BatchNorm to SyncBatchNorm so statistics cover the global micro-batch."""
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
    eval_batch_size: int = 1024
    """Validation/test images per worker per forward."""
    resume: str = "auto"
    """auto: continue from RUN_DIR/checkpoints/last.pt when present; never; or a checkpoint path."""
    stop_after_steps: Optional[int] = None
    """End the job cleanly after this many optimizer steps (the schedule still spans
    ``epochs``), writing last.pt; a later launch resumes. For time-boxed jobs."""
    on_nonfinite: Literal["stop", "skip"] = "stop"
    """What to do when the loss is NaN/Inf on any rank."""
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
class DRegConfig:
    enabled: bool = True
    layer: str = "R1"
    """Module path (``layer4.1.conv2``) or reverse topological level among 3x3 convs
    (``R1`` = last 3x3 conv, ``R2`` the one before, ...)."""
    lam: float = 0.1
    """lambda in Eq. 3: weight of the contrast term, >= 0."""
    init_scale: float = 0.01
    """W^L = W^R + init_scale * rms(W^R) * N(0, 1) at start (seeded, identical on every worker)."""
    norm: Literal["per_path", "shared"] = "per_path"
    """Whether the norm layer right after the DReg layer is duplicated per path (own affine
    weights and running statistics) or shared by both paths."""
    form: Literal["literal", "relative", "saturating"] = "relative"
    """Contrast term: literal ||W^R-W^L||_F^2 (Eq. 3, unbounded); relative (divided by
    ||W^R||^2+||W^L||^2, bounded by 2); saturating (tau^2 (1-exp(-d^2/tau^2)), bounded by tau^2).
    The default is ``relative`` because of the CIFAR-10 study in docs/results/: the literal
    term with the paper's lambda diverged at batch 512 at every learning rate tried and lost
    accuracy at 4096, the relative one never did. ``literal`` gives Eq. 3 exactly."""
    tau: float = 1.0
    """Saturation distance of the saturating form."""
    contrast_reduction: Literal["sum", "mean"] = "sum"
    """sum over the layer's elements (literal) or mean (divided by their number)."""
    ce_reduction: Literal["sum", "mean"] = "sum"
    """sum of the two paths' cross-entropies (literal Eq. 3) or their mean."""


@dataclass
class MethodsConfig:
    """Hyperparameters of the comparison methods; each method reads only its own keys."""

    gradnorm_lam: float = 0.01
    """gradnorm: weight lambda of the micro-batch penalty ||grad CE_M||^2 (Novack et al. 2023)."""
    fisher_lam: float = 0.01
    """fisher: weight lambda of the micro-batch Fisher-trace penalty (labels sampled from the model)."""
    penalty_micro_batch_size: int = 128
    """gradnorm/fisher: micro-batch size m; each rank's batch is cut into chunks of m (paper: 128)."""
    sam_rho: float = 0.05
    """sam: radius rho of the per-worker ascent step e = rho * g / ||g|| (m-sharpness, m = B/K)."""
    extragradient_gamma: Optional[float] = None
    """extragradient: local extrapolation step u = w - gamma * g_local; null = the current learning rate."""
    gradientmix_strength: float = 1.0
    """gradientmix: 0 = plain averaging, 1 = random convex weights; in between blends the two."""
    gradientmix_alpha: float = 1.0
    """gradientmix: Dirichlet concentration of the random worker weights (large = close to the mean)."""
    gradientmix_seed: Optional[int] = None
    """gradientmix: seed of the per-step weights (the same on every rank); null = train.seed."""


@dataclass
class LogConfig:
    every_steps: int = 20
    tensorboard: bool = True
    progress: Literal["auto", "bar", "lines", "off"] = "auto"
    """Console progress: auto = a live bar on a TTY, plain lines otherwise; off = no progress
    lines (epoch results and warnings still print)."""


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
    dreg: DRegConfig = field(default_factory=DRegConfig)
    methods: MethodsConfig = field(default_factory=MethodsConfig)
    log: LogConfig = field(default_factory=LogConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    method: str = "auto"
    """Training method: auto (dreg when dreg.enabled, else vanilla) | vanilla | dreg | gradnorm |
    fisher | sam | extragradient | gradientmix (see dreg_dist/methods/)."""
    run_dir: Optional[str] = None
    """Where outputs go; default runs/<config file stem>."""
