"""Data for training and evaluation, identical whatever the number of workers.

Which samples form global batch t of an epoch, and how each is augmented, depend only on
(seed, epoch, t, sample index); each of K workers takes its contiguous B/K slice. The same
config therefore sees exactly the same data on 1 or 8 workers, which keeps large-batch
experiments comparable and makes multi-worker runs testable against single-worker ones.

Datasets: ``cifar10`` / ``cifar100`` (read from the pickled "python version" files),
``synthetic`` (seeded, learnable, in memory), ``imagefolder`` (ImageNet layout) and
``shards`` (the same images converted by ``dreg-shards`` into tar shards + index.json).
"""

from dreg_dist.data.build import check_data_available, build_data
from dreg_dist.data.errors import DataError
from dreg_dist.data.imagefolder import ImageFolderDataModule
from dreg_dist.data.module import Batch, DataModule, InMemoryDataModule
from dreg_dist.data.shards import ShardDataModule

__all__ = [
    "Batch",
    "DataError",
    "DataModule",
    "ImageFolderDataModule",
    "InMemoryDataModule",
    "ShardDataModule",
    "build_data",
    "check_data_available",
]
