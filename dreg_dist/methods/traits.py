"""What a method declares about itself: one frozen record, :class:`Traits`, read by everyone.

A method's class sets ``traits = Traits(...)``; where a trait depends on the hyperparameters
the instance refines it in ``__init__`` (``self.traits = dataclasses.replace(type(self).traits,
replaces_allreduce=self.hp.strength > 0)``), so every reader asks ``method.traits.X`` and
never the class for something the config decides.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional


@dataclass(frozen=True)
class Traits:
    """The declared properties of a method (each with the value of a plain cross-entropy method)."""

    section: Optional[str] = None
    """Dotted config section of the method's ``Config``; None means ``methods.<name>``."""
    outputs: tuple[str, ...] = ("model",)
    """Names of what ``eval_outputs`` returns, in order of preference on ties; the export keeps
    the best of them by validation accuracy."""
    compiles: bool = True
    """False when the step needs something torch.compile cannot do (double backprop)."""
    needs_sample_index: bool = False
    """The method's own per-sample work reads :attr:`Batch.index` (chunks identified or seeded by
    their samples' positions in the global batch), beyond the keyed forward every method has."""
    syncs_with_host: bool = False
    """The step reads a device value on the host (``float(norm)``, ``bool(isfinite(...))``,
    ``.item()``, a loss-scaler read), so the host waits for the device inside the step."""
    replaces_allreduce: bool = False
    """``configure_ddp`` installs the method's own DDP communication hook (so no other hook, such
    as gradient compression, can be combined with it)."""


__all__ = ["Traits"]
