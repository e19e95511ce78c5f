"""Grids of training runs: expansion into cells (``grid``) and sequential execution (``runner``).

``launch/sweep.py`` is the command line; ``launch/report.py`` (``dreg_dist.report``) reads
what a sweep leaves behind.
"""

from dreg_dist.sweep.grid import Cell, Grid, GridError, expand_grid, load_grid

__all__ = ["Cell", "Grid", "GridError", "expand_grid", "load_grid"]
