"""Reports of sweeps: load run folders, aggregate over seeds, select learning rates, plot, write Markdown.

``runs`` (loading run records, :mod:`dreg_dist.records`), ``keys`` (roles and labels of config
keys), ``aggregate`` (groups and setups), ``analysis`` (which key plays which role, grouping,
selection), ``select`` (learning-rate choice on validation, epochs-to-target), ``stats`` (means
and intervals over seeds), ``compare`` (rows against the baseline, gap closed, transfers),
``signals`` (each method's own signals), ``step_gap`` (a large batch's gap split into the part its
missing optimizer steps explain and the rest), ``followup`` (grids that follow a report), ``plots``
(matplotlib, imported only when drawing), ``cells`` (formatted numbers, definitions) and
``markdown`` (report.md, :func:`write_report`). ``launch/report.py`` is the command line.
Nothing here imports torch or method code: a run is known only by its records.
"""

from dreg_dist.report.select import LrResult, epochs_to_reach, select_lr

__all__ = ["LrResult", "epochs_to_reach", "select_lr"]
