"""dreg-dist: distributed large-batch training of image classifiers with DReg."""

__version__ = "0.1.0"
