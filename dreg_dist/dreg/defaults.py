"""DReg's defaults: one set for the library and the service.

:class:`~dreg_dist.dreg.DualPathModel`, :class:`~dreg_dist.dreg.DRegObjective` and the
service's ``dreg:`` config section (``dreg_dist/methods/dreg/``) all take their defaults from
here, so the README's library example trains the objective ``method=dreg`` trains. Why each
value was chosen is in ``dreg_dist/dreg/README.md`` ("Defaults, and the evidence").
"""

from __future__ import annotations

LAYER = "R1"
"""The last 3x3 conv (the paper's choice)."""
LAMBDA = 0.1
"""The paper's lambda."""
INIT_SCALE = 0.01
"""W^L = W^R + INIT_SCALE * rms(W^R) * N(0, 1) at start ("slightly distinctive")."""
NORM = "per_path"
"""The norm right after the DReg layer is duplicated per path."""
FORM = "projected"
"""The paper's push along W^R - W^L, with the branches' relative distance held at ``RADIUS``."""
RADIUS = 0.5
"""Relative distance the projected form holds the branches at (at most)."""
TAU = 1.0
"""Saturation distance of the saturating form."""
CONTRAST_REDUCTION = "sum"
"""The contrast summed over the layer's elements, as Eq. 3 writes it."""
CE_REDUCTION = "per_path"
"""The two paths' cross-entropies: the mean for shared modules, each path's whole for its own."""


def branch_grad_scale(ce_reduction: str) -> float:
    """The ``DualPathModel(branch_grad_scale=...)`` an objective with ``ce_reduction`` trains."""
    return 2.0 if ce_reduction == "per_path" else 1.0
