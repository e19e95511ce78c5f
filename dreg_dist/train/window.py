"""The training loss between two log lines, summed on the device, and the images/s it took.

The step loop adds each step's loss parts with the step's agreed "skipped" flag; a skipped
step adds zeros and does not count, without a host read (in device mode the flag is still
on the GPU). The one host read is at the logging cadence, in :meth:`LossWindow.means`.
"""

from __future__ import annotations

import time
from typing import Mapping, Optional

import torch
from torch import Tensor

from dreg_dist.distributed import all_reduce_sum


class LossWindow:
    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.throughput: list[float] = []
        """Images/s (all ranks) of every window logged so far."""
        self.reset()

    def reset(self) -> None:
        """An empty window; its clock starts now."""
        self._sums: dict[str, Tensor] = {}
        self._steps = torch.zeros((), device=self.device)
        self._start = time.perf_counter()

    def add(self, parts: dict[str, Tensor], skipped: Tensor) -> None:
        """One step's loss parts (0-d tensors); ``skipped``: the step's agreed 0-d bool flag."""
        for key, value in parts.items():
            masked = torch.where(skipped, torch.zeros_like(value), value)
            self._sums[key] = self._sums.get(key, 0.0) + masked
        self._steps = self._steps + (1.0 - skipped.float())

    def means(self, world_size: int, global_batch_size: int, also: Optional[Mapping[str, Tensor]] = None
              ) -> Optional[tuple[dict[str, float], float]]:
        """Each part's mean over the window's applied steps and all ranks (a collective, at
        the same point on every rank), and the images/s; None for a window with no applied step.
        ``also``: more 0-d values (the same keys on every rank) averaged over ranks only, in
        the same all-reduce."""
        keys = sorted(self._sums)
        if not keys:
            return None
        steps = float(self._steps)
        if steps == 0:
            return None
        extra = sorted(also or {})
        vec = torch.stack([torch.as_tensor(self._sums[k], device=self.device).float() for k in keys]
                          + [also[k].to(self.device).float() for k in extra])  # type: ignore[index]
        all_reduce_sum(vec)
        vec /= world_size
        vec[:len(keys)] /= steps
        keys = keys + extra
        ips = steps * global_batch_size / max(time.perf_counter() - self._start, 1e-9)
        self.throughput.append(ips)
        return dict(zip(keys, vec.tolist())), ips

    def mean_throughput(self) -> Optional[float]:
        return sum(self.throughput) / len(self.throughput) if self.throughput else None


__all__ = ["LossWindow"]
