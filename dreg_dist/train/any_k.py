"""Same training on any number of workers K: what the trainer sets up for it.

The data side is K-independent by construction (:mod:`dreg_dist.data.sampling`). This
module adds the model side and the glue, all at start-up:

* :func:`prepare_model`: random ops in the forward keyed by sample
  (:mod:`dreg_dist.models.forward_keys`), and with ``train.bn_group_size`` ghost batch norm
  (:mod:`dreg_dist.models.ghost_bn`). Applied after the method's surgery, before DDP.
* :class:`KeyedTrainData`: the data module as the trainer sees it. Its ``train_batches``
  uses the accumulation steps of this world size (derived from ``train.micro_batch_size``
  when set) and tells the forward keys which optimizer step each step's micro-batches are
  for; the micro-batches carry their samples' positions themselves
  (:class:`dreg_dist.models.batch.Batch`), which key the forward.
* :func:`install_step_hooks`: ghost batch norm's running statistics, one all-reduced
  update per optimizer step.
* :func:`different_world_warning`: what exactly changes when a checkpoint written by K
  workers resumes on K' (one line).
"""

from __future__ import annotations

from typing import Any, Callable, Iterator, Optional

import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.optim import Optimizer

from dreg_dist.config import Config, TrainConfig
from dreg_dist.config.validate import worker_batch_layout
from dreg_dist.models import (
    Batch,
    ForwardKeys,
    convert_ghost_batch_norm,
    convert_keyed_random,
    ghost_modules,
    install_running_stat_updates,
    with_positions,
)


def prepare_model(model: nn.Module, t: TrainConfig, keys: ForwardKeys) -> dict[str, list[str]]:
    """Key ``model``'s random ops by sample and, with ``t.bn_group_size``, make its BatchNorm
    ghost batch norm; every forward of ``model`` is keyed through ``keys``. In place (the
    module objects, their paths and the state_dict keys stay). Returns the converted module
    names by kind ('keyed', 'ghost')."""
    done = {"keyed": convert_keyed_random(model, keys), "ghost": []}
    if t.bn_group_size is not None:
        done["ghost"] = convert_ghost_batch_norm(model, t.bn_group_size, keys)
    keys.attach(model)
    return done


def install_step_hooks(optimizer: Optimizer, module: nn.Module, keys: ForwardKeys) -> None:
    """Ghost batch norm's running statistics: one all-reduced update per optimizer step."""
    install_running_stat_updates(optimizer, module, keys)


class KeyedTrainData:
    """The data module, with ``train_batches`` laid out for this world and keyed.

    Everything else is the wrapped module's (attribute access is forwarded).
    """

    def __init__(self, data: Any, keys: ForwardKeys, t: TrainConfig, world_size: int,
                 step: Callable[[], int]) -> None:
        self._data = data
        self._keys = keys
        self._derived = t.micro_batch_size is not None
        self.accumulation_steps, self.micro_batch_size = worker_batch_layout(t, world_size)
        self._step = step

    def __getattr__(self, name: str) -> Any:
        if name == "_data":  # not set yet (copy, unpickling): no recursion
            raise AttributeError(name)
        return getattr(self._data, name)

    def train_batches(self, epoch: int, global_batch_size: int, rank: int, world_size: int,
                      accumulation_steps: int = 1, start_step: int = 0) -> Iterator[list[Batch]]:
        """The data module's ``train_batches``; with ``train.micro_batch_size`` the accumulation
        steps are this world's (the argument is ignored). The forward keys learn each step's
        number before its micro-batches are handed out."""
        steps = self.accumulation_steps if self._derived else accumulation_steps
        inner = self._data.train_batches(epoch, global_batch_size, rank, world_size, steps, start_step=start_step)
        return self._keyed(inner, rank)

    def _keyed(self, inner: Iterator[list[Any]], rank: int) -> Iterator[list[Batch]]:
        for batches in inner:
            self._keys.begin_step(self._step())
            yield with_positions(batches, rank)  # a data module of plain pairs gets the sampler's layout


def _micro(train: dict[str, Any], world_size: int) -> Optional[int]:
    """Images per worker per forward of a saved config's ``train`` section on ``world_size`` workers."""
    try:
        batch = int(train["global_batch_size"])
        if train.get("micro_batch_size"):
            return int(train["micro_batch_size"])
        return batch // (world_size * int(train.get("accumulation_steps") or 1))
    except (KeyError, TypeError, ValueError, ZeroDivisionError):
        return None


def different_world_warning(saved: dict[str, Any], cfg: Config, world_size: int, module: nn.Module) -> str:
    """One line: resuming a checkpoint of ``len(saved['rng'])`` workers on ``world_size``, what is
    the same and what differs from an uninterrupted run."""
    before = int(saved.get("world_size") or len(saved.get("rng") or ()) or 1)
    t = cfg.train
    old_micro = _micro((saved.get("config") or {}).get("train") or {}, before)
    new_micro = worker_batch_layout(t, world_size)[1]
    same_micro = old_micro == new_micro
    plain_bn = any(isinstance(m, _BatchNorm) for m in module.modules()) and not ghost_modules(module)
    was = f"{old_micro}" if old_micro is not None else "an unknown number of"
    same = ["the data order and augmentation", "dropout and stochastic-depth masks (keyed by sample)"]
    differs = []
    if ghost_modules(module):
        same.append(f"BatchNorm (groups of train.bn_group_size={t.bn_group_size})")
    elif plain_bn and t.sync_bn:
        old_global = old_micro * before if old_micro is not None else None
        if old_global == new_micro * world_size:
            same.append("BatchNorm statistics (train.sync_bn over the same global micro-batches)")
        else:
            differs.append(f"BatchNorm batch statistics (train.sync_bn over global micro-batches of "
                           f"{new_micro * world_size} images, before {old_global})")
    elif plain_bn:
        if same_micro:
            differs.append(f"BatchNorm running statistics (each worker's micro-batch is still {new_micro} images, "
                           "so batch statistics and gradients are unchanged, but the running statistics follow rank "
                           "0's micro-batches)")
        else:
            differs.append(f"BatchNorm batch statistics, gradients and running statistics (over each worker's "
                           f"micro-batch of {new_micro} images, before {was})")
    if same_micro:
        same.append("other random ops in the forward (seeded per micro-batch, same size)")
    else:
        differs.append(f"other random ops in the forward, e.g. functional dropout (seeded per micro-batch of "
                       f"{new_micro} images, before {was})")
    differs.append("the saved per-rank RNG states (not restored)")
    differs.append("the rounding of gradient sums (last bits)")
    hint = "; set train.bn_group_size to make BatchNorm independent of K" if plain_bn and not t.sync_bn else ""
    workers = f"{before} worker" + ("s" if before != 1 else "")
    return (f"warning: checkpoint was written by {workers}, now {world_size}; unchanged: {', '.join(same)}; "
            f"different: {', '.join(differs)}{hint}")


__all__ = ["KeyedTrainData", "different_world_warning", "install_step_hooks", "prepare_model"]
