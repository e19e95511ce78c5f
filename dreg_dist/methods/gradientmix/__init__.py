"""GradientMix: random convex mixing of the workers' local gradients, see README.md.

Interpretation (the rule is not public in what we could read): at step t every rank
draws the same weights  a = (1 - s) / K + s * Dirichlet(alpha, ..., alpha)  over the K
workers from a generator seeded by (seed, t), and the DDP communication hook all-reduces
a_k * g_k instead of g_k / K. Every rank therefore holds the same mixed gradient
sum_k a_k g_k (replicas stay identical); the weights sum to 1 and have mean 1/K, so the
mixed gradient is an unbiased, noisier estimate of the mean gradient. s = 0 is plain
averaging (no hook is registered); K = 1 is the plain gradient.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel as DDP

from dreg_dist.errors import ConfigError
from dreg_dist.methods._util import rank_and_world, seed_from
from dreg_dist.methods.base import Batch, Method, RunSettings, StepContext
from dreg_dist.methods.naming import config_key
from dreg_dist.methods.traits import Traits


def mix_weights(seed: int, step: int, world_size: int, alpha: float, strength: float) -> np.ndarray:
    """The K worker weights of step ``step`` (float64, sum 1), identical on every rank."""
    if world_size == 1:
        return np.ones(1)
    uniform = np.full(world_size, 1.0 / world_size)
    if strength == 0:
        return uniform
    rng = np.random.default_rng(seed_from(seed, step))
    return (1.0 - strength) * uniform + strength * rng.dirichlet(np.full(world_size, alpha))


def mix_hook(state, bucket):  # type: ignore[no-untyped-def]
    """DDP communication hook: all-reduce (sum) of this rank's gradient times its weight.

    (state: GradientMix, bucket: dist.GradBucket) -> Future[Tensor]; left unannotated
    because DDP checks the annotations by identity and this module's are strings.
    """
    weights = state.current_weights
    if weights is None:
        raise RuntimeError("gradientmix: backward ran before compute_gradients set the step's weights")
    rank = dist.get_rank()
    buffer = bucket.buffer()
    buffer.mul_(float(weights[rank]))
    future = dist.all_reduce(buffer, async_op=True).get_future()
    return future.then(lambda fut: fut.value()[0])


@dataclass
class GradientMixConfig:
    strength: float = 1.0
    """0 = plain averaging, 1 = random convex weights; in between blends the two."""
    alpha: float = 1.0
    """Dirichlet concentration of the random worker weights (large = close to the mean)."""
    seed: Optional[int] = None
    """Seed of the per-step weights (the same on every rank); null = train.seed."""


class GradientMix(Method):
    name = "gradientmix"
    Config = GradientMixConfig
    # Its hook replaces DDP's all-reduce when strength > 0 (refined per instance). The weights are
    # drawn on the host (numpy) and only sent to the device: the step reads nothing back.
    traits = Traits(replaces_allreduce=True)

    def check(self, module: Optional[nn.Module] = None) -> list[str]:
        if not 0.0 <= self.hp.strength <= 1.0:
            raise ConfigError(f"config key '{config_key(self, 'strength')}' must be in [0, 1], got {self.hp.strength}")
        if not self.hp.alpha > 0:
            raise ConfigError(f"config key '{config_key(self, 'alpha')}' must be > 0, got {self.hp.alpha}")
        return []

    def __init__(self, hp: Optional[GradientMixConfig] = None, settings: RunSettings = RunSettings()) -> None:
        super().__init__(hp, settings)
        self.traits = dataclasses.replace(type(self).traits, replaces_allreduce=self.hp.strength > 0)
        self.seed = self.hp.seed if self.hp.seed is not None else settings.seed
        self.current_weights: Optional[np.ndarray] = None
        self.hooked = False
        self._calls = 0

    def configure_ddp(self, ddp_model: DDP) -> None:
        if self.hp.strength > 0:
            ddp_model.register_comm_hook(state=self, hook=mix_hook)
            self.hooked = True

    def compute_gradients(self, ctx: StepContext, batches: list[Batch]) -> dict[str, Tensor]:
        step = ctx.step if ctx.step is not None else self._calls
        self._calls += 1
        _, world_size = rank_and_world()
        if world_size > 1 and self.hp.strength > 0 and not self.hooked:
            raise RuntimeError(
                "gradientmix needs its DDP communication hook: the trainer must call "
                "method.configure_ddp(ddp_model) right after wrapping the model in DDP"
            )
        self.current_weights = mix_weights(self.seed, step, world_size, self.hp.alpha, self.hp.strength)
        parts = super().compute_gradients(ctx, batches)
        device = parts["loss"].device
        parts["mix_weight_max"] = torch.tensor(float(self.current_weights.max()), device=device)
        return parts


__all__ = ["GradientMix", "GradientMixConfig", "mix_hook", "mix_weights"]
