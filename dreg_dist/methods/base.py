"""What a training method is: everything the rest of the service may ask of one.

The trainer owns everything around a step (data, learning rate, gradient scaling and
clipping, the optimizer step, logging, checkpoints). A method owns everything that is
particular to it, so that no code outside ``dreg_dist/methods/`` names a method. The whole
protocol is the public members of :class:`Method` (a test keeps the list from growing):

* declared: :attr:`~Method.name`, :attr:`~Method.Config` (its hyperparameters, a dataclass),
  :attr:`~Method.description` (optional data; else ``description.yaml`` beside the class) and
  :attr:`~Method.traits` (:class:`~dreg_dist.methods.traits.Traits`: config section, outputs,
  whether it compiles, reads sample positions, syncs with the host, replaces the all-reduce);
* hooks: :meth:`~Method.check` (refuse bad values; start-up warnings), :meth:`~Method.prepare_model`,
  :meth:`~Method.configure_ddp`, :meth:`~Method.compute_gradients` (the base implements it through
  :meth:`~Method.loss`), :meth:`~Method.after_step`, :meth:`~Method.values` (logged / final
  values), :meth:`~Method.eval_outputs`, :meth:`~Method.export_model`.

What is generic lives beside it as functions, not members: the config section and keys, the
description and the hyperparameters by key (:mod:`dreg_dist.methods.naming`), and which output
the export keeps and how it is written (:mod:`dreg_dist.methods.outputs`).

How the method is named, read and reported (labels, study keys, report columns, signals and
notes, console keys) is not training code: it is the method's *description*, data in
``description.yaml`` beside it (:class:`dreg_dist.records.Description`,
:func:`dreg_dist.methods.naming.describe`), which the trainer copies into every run record, so
that sweeps and reports never import this.

A method never imports the config of the whole run: it gets its own hyperparameters and
the few run settings it may use (:class:`RunSettings`).
"""

from __future__ import annotations

from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from typing import Any, Callable, ClassVar, ContextManager, Iterator, Mapping, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel as DDP

from dreg_dist.errors import ConfigError
from dreg_dist.methods.traits import Traits
from dreg_dist.models.batch import Batch  # (x, y) with each sample's position in the global batch
from dreg_dist.models.forward_keys import keyed
from dreg_dist.records.description import Signal

DESCRIPTION_FILE = "description.yaml"
"""A method's description, beside the module that defines its class (see
:func:`dreg_dist.methods.naming.describe`)."""

RETIRED: dict[str, str] = {
    "section": "the trait 'traits = Traits(section=...)'",
    "outputs": "the trait 'traits = Traits(outputs=(...))'",
    "supports_compile": "the trait 'traits = Traits(compiles=...)'",
    "replaces_allreduce": "the trait 'traits = Traits(replaces_allreduce=...)' (refined in __init__ with "
                          "dataclasses.replace when the hyperparameters decide it)",
    "startup_notes": "check(module), which returns the start-up warnings",
    "log_values": "values(module, final=False)",
    "summary_values": "values(module, final=True)",
    "choose_output": "the generic choice (the best of traits.outputs by validation accuracy, "
                     "dreg_dist.methods.choose_output)",
    "exported_model": "export_model(module, output)",
    "export": "export_model(module, output) (writing the export is generic: dreg_dist.methods.export_output)",
}
"""Members of the protocol before :class:`Traits` -> what replaces each (a class that still
defines one is refused in one line rather than have it silently ignored)."""


def retired_member(cls: type) -> Optional[str]:
    """The one-line refusal of a method class that defines a retired member; None if it has none."""
    old = next((a for a in RETIRED if hasattr(cls, a)), None)
    if old is None:
        return None
    return (f"method '{getattr(cls, 'name', cls.__name__)}' ({cls.__module__}:{cls.__qualname__}) defines "
            f"'{old}', which is no longer part of the method protocol: use {RETIRED[old]}")


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
        ddp = getattr(self.model, "_orig_mod", self.model)  # torch.compile wraps the DDP model
        with ddp.no_sync() if isinstance(ddp, DDP) and not last else nullcontext():
            yield
        after, self.first_block = self.first_block, None
        if after is not None and not last and samples is not None:
            after(samples)


class Method:
    """Base class: plain accumulation of :meth:`loss` over micro-batches, one all-reduce.

    The protocol a method implements (its public members, nothing else): *declared* --
    :attr:`name`, :attr:`Config`, :attr:`description`, :attr:`traits`; *hooks*, each with a
    default that does the plain thing -- :meth:`check`, :meth:`prepare_model`,
    :meth:`configure_ddp`, :meth:`compute_gradients` (or just :meth:`loss`), :meth:`after_step`,
    :meth:`values`, :meth:`eval_outputs`, :meth:`export_model`.
    """

    name: ClassVar[str] = "base"
    Config: ClassVar[type] = NoConfig
    """The dataclass of this method's hyperparameters (one field per config key)."""
    description: ClassVar[Optional[Mapping[str, Any]]] = None
    """The method's description as data (the keys of a ``description.yaml``); None: the
    ``description.yaml`` in the folder of the module that defines the class (none: empty)."""
    traits: ClassVar[Traits] = Traits()
    """What the method declares (config section, outputs, compile, sample positions, host syncs,
    all-reduce); an instance may refine it from its hyperparameters in ``__init__``."""

    def __init__(self, hp: Any = None, settings: RunSettings = RunSettings()) -> None:
        problem = retired_member(type(self))
        if problem:
            raise ConfigError(problem)
        self.hp = hp if hp is not None else self.Config()
        self.settings = settings
        self.label_smoothing = settings.label_smoothing
        self.check()

    def check(self, module: Optional[nn.Module] = None) -> list[str]:
        """Raise ConfigError (one line, naming the key) for a bad hyperparameter; return one-line
        warnings about this run's settings. ``__init__`` calls it without a model (to refuse bad
        values at once); the trainer calls it with the model :meth:`prepare_model` built and prints
        the warnings once (rank 0). Only checks: what the method derives from its hyperparameters
        it derives in ``__init__``."""
        return []

    # ------------------------------------------------------------ model
    def prepare_model(self, model: nn.Module) -> nn.Module:
        """Model surgery done once at start-up (before DDP wrapping)."""
        return model

    def configure_ddp(self, ddp_model: DDP) -> None:
        """Called once right after DDP wrapping, before the first forward (e.g. to register
        a communication hook: then declare ``traits.replaces_allreduce``). Not called for a
        single process."""

    # ------------------------------------------------------------ step
    def loss(self, outputs: Any, target: Tensor, module: nn.Module) -> tuple[Tensor, dict[str, Tensor]]:
        """The loss of one micro-batch and its detached parts for logging (what the base
        :meth:`compute_gradients` accumulates)."""
        loss = F.cross_entropy(logits_for_loss(outputs), target, label_smoothing=self.label_smoothing)
        return loss, {}

    def compute_gradients(self, ctx: StepContext, batches: list[Batch]) -> dict[str, Tensor]:
        """Leave the *all-reduced* gradient of the step in ``.grad``; return the mean of each
        logged part. The base: backward the mean :meth:`loss` over ``batches``."""
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

    def values(self, module: nn.Module, final: bool) -> dict[str, float]:
        """Scalars about the model: for ``train/`` at logging steps (``final=False``, e.g. branch
        distance), or about the trained model for ``summary.json`` (``final=True``: its
        description's ``report_columns``)."""
        return {}

    # ------------------------------------------------------------ evaluation and export
    def eval_outputs(self, module: nn.Module, x: Tensor) -> dict[str, Tensor]:
        """Output name (one of ``traits.outputs``) -> logits for evaluation."""
        return {"model": module(x)}

    def export_model(self, module: nn.Module, output: Optional[str]) -> nn.Module:
        """The ordinary model the export holds for ``output`` (None for a method with one output):
        what the test split scores and :func:`dreg_dist.methods.outputs.export_output` writes. Values to record in
        the export's meta go in a dict attribute ``export_meta`` of the returned model
        (:func:`dreg_dist.methods.outputs.with_export_meta`)."""
        return module


__all__ = ["DESCRIPTION_FILE", "RETIRED", "Batch", "Method", "NoConfig", "RunSettings", "Signal", "StepContext",
           "Traits", "logits_for_loss", "retired_member"]
