"""What a training method is: everything the rest of the service may ask of one.

The trainer owns everything around a step (data, learning rate, gradient scaling and
clipping, the optimizer step, logging, checkpoints). A method owns everything that is
particular to it, so that no code outside ``dreg_dist/methods/`` names a method:

* its hyperparameters: a dataclass (:attr:`Method.Config`) under a config section
  (:attr:`Method.section`, ``methods.<name>`` unless the method says otherwise);
* model surgery, once at start-up (:meth:`Method.prepare_model`);
* the gradient of its objective: given this rank's micro-batches, leave the *all-reduced*
  gradient in ``.grad`` and return detached loss parts for logging. Two-pass methods (SAM,
  extragradient) and double-backprop penalties override :meth:`Method.compute_gradients`;
  the others only define :meth:`Method.loss`;
* what evaluation scores (:meth:`Method.eval_outputs`: one model, or several paths), what
  the export keeps and writes (:meth:`Method.choose_output`, :meth:`Method.export`);
* what is logged (:meth:`Method.log_values`) and what the summary holds about the trained
  model (:meth:`Method.summary_values`);
* declared properties the trainer checks: :attr:`Method.outputs`, :attr:`Method.supports_compile`,
  :attr:`Method.replaces_allreduce`.

How the method is named, read and reported (labels, study keys, report columns, signals and
notes, console keys) is not training code: it is the method's *description*, data in
``description.yaml`` beside it (:class:`dreg_dist.records.Description`, :meth:`Method.describe`),
which the trainer copies into every run record, so that sweeps and reports never import this.

A method never imports the config of the whole run: it gets its own hyperparameters and
the few run settings it may use (:class:`RunSettings`).
"""

from __future__ import annotations

import dataclasses
import inspect
import os
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, ClassVar, ContextManager, Iterator, Mapping, Optional, Union

import torch
import yaml
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel as DDP

from dreg_dist.models.batch import Batch  # (x, y) with each sample's position in the global batch
from dreg_dist.models.forward_keys import keyed
from dreg_dist.records.description import Description, Signal

DESCRIPTION_FILE = "description.yaml"
"""A method's description, beside the module that defines its class (see :meth:`Method.describe`)."""


def logits_for_loss(outputs: Tensor) -> Tensor:
    """Half-precision logits go to float32 for the loss; float32/float64 stay as they are."""
    return outputs.float() if outputs.dtype in (torch.float16, torch.bfloat16) else outputs


@dataclass(frozen=True)
class RunSettings:
    """The run-level settings a method may read (and nothing else of the run's config)."""

    seed: int = 0
    """``train.seed``: seeds per-step randomness that must agree on every rank."""
    label_smoothing: float = 0.0
    """``train.label_smoothing`` of the training cross-entropy."""
    peak_lr: float = 0.1
    """The peak learning rate after scaling with the global batch (``optim.lr`` scaled)."""
    weight_decay: float = 0.0
    """``optim.weight_decay`` (what the weights of conv and linear layers get)."""


@dataclass
class NoConfig:
    """Hyperparameters of a method that has none."""


@dataclass
class StepContext:
    """What a method may use during one optimizer step."""

    model: nn.Module
    """The model to call for training forwards (DDP-wrapped when distributed)."""
    module: nn.Module
    """The same model unwrapped (parameters, branch weights)."""
    autocast: Callable[[], ContextManager[Any]]
    scaler: torch.amp.GradScaler
    lr: Optional[float] = None
    """Learning rate this step's update uses (``optimizer.param_groups[0]["lr"]`` before
    the scheduler steps); None when the caller does not pass it. Extragradient uses it as
    its default extrapolation step."""
    step: Optional[int] = None
    """0-based index of this optimizer step over the whole run (the trainer's global step
    before it is incremented); None when unknown. Seeds per-step randomness (Fisher label
    sampling, GradientMix weights) so that it is identical on all ranks and across resumes."""

    first_block: Optional[Callable[[int], None]] = None
    """Run once, after the step's first :meth:`no_sync` block when that block is not the last,
    with its ``samples`` (the trainer's noise-scale meter reads the small-batch gradient there)."""

    @contextmanager
    def no_sync(self, last: bool, samples: Optional[int] = None) -> Iterator[None]:
        """One accumulation block: skip DDP's all-reduce unless ``last``. A block backwards the
        mean loss of its ``samples`` samples times their share of this worker's step (what
        plain accumulation does); methods pass ``samples`` so that the gradient after the
        first block measures the gradient noise (None: not measured from this block)."""
        with self.model.no_sync() if isinstance(self.model, DDP) and not last else nullcontext():
            yield
        after, self.first_block = self.first_block, None
        if after is not None and not last and samples is not None:
            after(samples)


class Method:
    """Base class: plain accumulation of ``loss`` over micro-batches, one all-reduce.

    The protocol a method implements: *declared* -- :attr:`name`, :attr:`Config` (and its
    :attr:`section`), :attr:`outputs`, :attr:`supports_compile`, :attr:`replaces_allreduce`;
    *hooks* -- :meth:`check`, :meth:`prepare_model`, :meth:`compute_gradients` (or just
    :meth:`loss`), :meth:`eval_outputs`, :meth:`choose_output` with :meth:`exported_model` /
    :meth:`export`; *optional hooks* with do-nothing defaults -- :meth:`configure_ddp`,
    :meth:`after_step`, :meth:`log_values`, :meth:`startup_notes`, :meth:`summary_values`.
    Everything for people and tools is its description (:meth:`describe`), not code.
    """

    name: ClassVar[str] = "base"
    Config: ClassVar[type] = NoConfig
    """The dataclass of this method's hyperparameters (one field per config key)."""
    section: ClassVar[Optional[str]] = None
    """Dotted config section of :attr:`Config`; None means ``methods.<name>``."""
    outputs: ClassVar[tuple[str, ...]] = ("model",)
    """Names of what :meth:`eval_outputs` returns, in order of preference on ties."""
    supports_compile: ClassVar[bool] = True
    """False when the method needs something torch.compile cannot do (double backprop)."""
    description: ClassVar[Optional[Mapping[str, Any]]] = None
    """The method's description as data (the keys of a ``description.yaml``); None: the
    ``description.yaml`` in the folder of the module that defines the class (none: empty)."""

    def __init__(self, hp: Any = None, settings: RunSettings = RunSettings()) -> None:
        self.hp = hp if hp is not None else self.Config()
        self.settings = settings
        self.label_smoothing = settings.label_smoothing
        self.check()

    # ------------------------------------------------------------ config
    @classmethod
    def config_section(cls) -> str:
        return cls.section or f"methods.{cls.name}"

    @classmethod
    def describe(cls) -> Description:
        """The description, completed with what the class declares (section, outputs, defaults)."""
        data = cls.description
        where = f"description of method {cls.name}"
        if data is None:
            path = Path(inspect.getfile(cls)).parent / DESCRIPTION_FILE
            where = str(path)
            data = (yaml.safe_load(path.read_text()) or {}) if path.is_file() else {}
        written = Description.from_dict(data, name=cls.name, where=where)
        return dataclasses.replace(written, section=cls.config_section(), outputs=tuple(cls.outputs),
                                   defaults=dataclasses.asdict(cls.Config()))

    def check(self) -> None:
        """Raise ConfigError (one line, naming the key) for a bad hyperparameter. Only checks:
        what the method derives from its hyperparameters it derives in ``__init__``."""

    def key(self, field: str) -> str:
        """The dotted config key of one of this method's fields (for error messages)."""
        return f"{self.config_section()}.{field}"

    def hparams(self) -> dict[str, Any]:
        """This method's hyperparameters by dotted key (TensorBoard's hparams view)."""
        return {self.key(f.name): getattr(self.hp, f.name) for f in dataclasses.fields(self.hp)}

    # ------------------------------------------------------------ model
    def prepare_model(self, model: nn.Module) -> nn.Module:
        """Model surgery done once at start-up (before DDP wrapping)."""
        return model

    def configure_ddp(self, ddp_model: DDP) -> None:
        """Called once right after DDP wrapping, before the first forward (e.g. to register
        a communication hook). Not called for a single process."""

    @property
    def replaces_allreduce(self) -> bool:
        """Whether :meth:`configure_ddp` installs its own DDP communication hook (so no other
        hook, such as gradient compression, can be combined with it)."""
        return False

    # ------------------------------------------------------------ step
    def loss(self, outputs: Any, target: Tensor, module: nn.Module) -> tuple[Tensor, dict[str, Tensor]]:
        loss = F.cross_entropy(logits_for_loss(outputs), target, label_smoothing=self.label_smoothing)
        return loss, {}

    def compute_gradients(self, ctx: StepContext, batches: list[Batch]) -> dict[str, Tensor]:
        """Backward the mean loss over ``batches``; returns the mean of each logged part."""
        totals: dict[str, Tensor] = {}
        n = len(batches)
        for i, batch in enumerate(batches):
            x, y = batch
            with ctx.no_sync(last=i == n - 1, samples=int(y.shape[0])):
                with ctx.autocast(), keyed(batch):  # the forward is keyed by the batch's sample positions
                    outputs = ctx.model(x)
                loss, parts = self.loss(outputs, y, ctx.module)
                ctx.scaler.scale(loss / n).backward()
            for key, value in {"loss": loss.detach(), **parts}.items():
                totals[key] = totals.get(key, 0.0) + value.float() / n
        return totals

    def after_step(self, module: nn.Module) -> None:
        """Called after every optimizer step (e.g. a projection of the weights); on every rank,
        on identical weights, with tensor operations only (no host sync)."""

    def log_values(self, module: nn.Module) -> dict[str, float]:
        """Extra scalars for ``train/`` at logging steps (e.g. branch distance)."""
        return {}

    def startup_notes(self, module: nn.Module) -> list[str]:
        """One-line warnings about this run's settings, printed once at start-up (rank 0)."""
        return []

    # ------------------------------------------------------------ evaluation and export
    def eval_outputs(self, module: nn.Module, x: Tensor) -> dict[str, Tensor]:
        """Output name -> logits for evaluation. The best output by validation accuracy is
        the one exported; ties go to the first name."""
        return {"model": module(x)}

    def choose_output(self, val_acc: Mapping[str, float], requested: str = "auto") -> Optional[str]:
        """Which output the export keeps: ``requested``, or for ``auto`` the best by ``val_acc``
        (output -> validation accuracy). None for a method with a single output."""
        if requested not in ("auto", "model"):
            raise ValueError(f"method {self.name} has one output ('model'); got path {requested!r}")
        return None

    def exported_model(self, module: nn.Module, output: Optional[str]) -> nn.Module:
        """The ordinary model the export holds (what the test split scores)."""
        return module

    def export(
        self,
        module: nn.Module,
        out_dir: Union[str, os.PathLike[str]],
        *,
        val_acc: Mapping[str, float],
        output: Optional[str],
        **meta: Any,
    ) -> dict[str, Any]:
        """Write the inference export of ``output`` (from :meth:`choose_output`) and return its
        meta. ``meta`` holds arch, num_classes, normalization, input shape and extra_meta for
        :func:`dreg_dist.dreg.write_plain_export`."""
        from dreg_dist.dreg.export import write_plain_export

        return write_plain_export(self.exported_model(module, output), out_dir, val_acc=val_acc, path=output,
                                  dreg_layer=None, **meta)

    def summary_values(self, module: nn.Module) -> dict[str, float]:
        """Values about the trained model for ``summary.json`` (its description's ``report_columns``)."""
        return {}


__all__ = ["DESCRIPTION_FILE", "Batch", "Method", "NoConfig", "RunSettings", "Signal", "StepContext", "logits_for_loss"]
