"""Reports of sweeps: load run folders, aggregate over seeds, select learning rates, plot, write Markdown.

``runs`` (loading), ``aggregate`` (grouping, tables), ``select`` (learning-rate choice on
validation, epochs-to-target), ``plots`` (matplotlib, imported only when drawing) and
``markdown`` (report.md, :func:`write_report`). ``launch/report.py`` is the command line.
"""

from dreg_dist.report.select import LrResult, epochs_to_reach, select_lr

__all__ = ["LrResult", "epochs_to_reach", "select_lr"]
