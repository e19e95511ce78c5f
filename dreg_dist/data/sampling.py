"""Which sample goes where: seeds, the validation hold-out, epoch orders and sharding.

The central rule of this package is that the *global* batch never depends on the number
of workers K. Everything random is therefore derived from named, hashed seeds of
(seed, purpose, epoch, ...) and generated on the CPU (CPU and CUDA generators produce
different streams, so generating on the data's device would tie the data to the
hardware). Global batch t of an epoch is the slice [t*B, (t+1)*B) of one permutation of
the training ids; rank k of K merely takes its contiguous block of B/K of it, cut into
equal accumulation micro-batches (:func:`dreg_dist.models.batch.rank_positions`, the one
statement of that layout). Concatenating all ranks' micro-batches in rank order thus
reproduces the single-worker batch exactly, in the same order.
"""

from __future__ import annotations

import hashlib

import torch
from torch import Tensor

from dreg_dist.data.errors import DataError
from dreg_dist.models.batch import rank_positions


def derive_seed(*parts: object) -> int:
    """A 63-bit seed from ``parts``, stable across processes and Python versions.

    Python's ``hash`` is salted per process and ``seed + epoch`` style arithmetic makes
    neighbouring streams collide (seed 1 epoch 0 == seed 0 epoch 1), hence a real hash.
    """
    digest = hashlib.blake2b(repr(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)


def cpu_generator(*parts: object) -> torch.Generator:
    """A CPU generator seeded by ``derive_seed(*parts)``."""
    return torch.Generator(device="cpu").manual_seed(derive_seed(*parts))


def split_train_val(n: int, val_size: int, seed: int) -> tuple[Tensor, Tensor]:
    """Hold ``val_size`` of the ``n`` training samples out for validation.

    Returns (train_ids, val_ids), both sorted int64 CPU tensors. Sorted so that ids are
    independent of the permutation's order beyond set membership, and so that eval reads
    memory mostly in order. The split depends on (seed, n, val_size) only.
    """
    if val_size < 0:
        raise DataError(f"data.val_size must be >= 0, got {val_size}")
    if val_size >= n:
        raise DataError(
            f"data.val_size={val_size} must be smaller than the training set ({n} images): "
            "lower data.val_size"
        )
    perm = torch.randperm(n, generator=cpu_generator(seed, "val_split", n))
    val_ids, _ = torch.sort(perm[:val_size])
    train_ids, _ = torch.sort(perm[val_size:])
    return train_ids, val_ids


def epoch_permutation(n: int, seed: int, epoch: int) -> Tensor:
    """The order of the ``n`` training positions in ``epoch``; depends on (seed, epoch) only,
    not on the batch size or K, so changing them keeps the sample stream."""
    return torch.randperm(n, generator=cpu_generator(seed, "epoch_order", epoch))


def steps_per_epoch(train_size: int, global_batch_size: int) -> int:
    """Number of full global batches; the last partial batch is dropped so that every
    optimizer step sees exactly B samples (the LR scaling assumes it)."""
    if global_batch_size <= 0:
        raise DataError(f"train.global_batch_size must be positive, got {global_batch_size}")
    if global_batch_size > train_size:
        raise DataError(
            f"train.global_batch_size={global_batch_size} exceeds the {train_size} training "
            "images (no full batch per epoch): lower train.global_batch_size or data.val_size"
        )
    return train_size // global_batch_size


def check_batch_layout(global_batch_size: int, rank: int, world_size: int, accumulation_steps: int) -> int:
    """Validate (B, rank, K, A) and return the micro-batch size B / (K*A)."""
    if world_size < 1 or not 0 <= rank < world_size:
        raise DataError(f"rank {rank} is outside world size {world_size}")
    if accumulation_steps < 1:
        raise DataError(f"train.accumulation_steps must be >= 1, got {accumulation_steps}")
    parts = world_size * accumulation_steps
    if global_batch_size <= 0 or global_batch_size % parts:
        raise DataError(
            f"train.global_batch_size={global_batch_size} is not divisible by workers x "
            f"train.accumulation_steps = {world_size} x {accumulation_steps} = {parts}: "
            f"use a multiple of {parts}"
        )
    return global_batch_size // parts


def micro_batch_positions(rank: int, accumulation_steps: int, micro: int) -> Tensor:
    """[accumulation_steps, micro] int64: the position in each step's global batch of every sample
    of rank's micro-batches (the same for every step)."""
    return torch.stack(rank_positions(rank, [micro] * accumulation_steps))


def rank_train_ids(
    train_ids: Tensor,
    seed: int,
    epoch: int,
    global_batch_size: int,
    rank: int,
    world_size: int,
    accumulation_steps: int = 1,
    start_step: int = 0,
) -> Tensor:
    """Sample ids this rank trains on, shaped [steps - start_step, accumulation_steps, micro].

    Returned as one tensor so a caller can move a whole epoch's ids to the accelerator in
    one copy instead of one synchronizing copy per step.
    """
    micro = check_batch_layout(global_batch_size, rank, world_size, accumulation_steps)
    steps = steps_per_epoch(int(train_ids.numel()), global_batch_size)
    if not 0 <= start_step <= steps:
        raise DataError(f"start_step {start_step} is outside the epoch's {steps} steps")
    perm = epoch_permutation(int(train_ids.numel()), seed, epoch)[: steps * global_batch_size]
    ids = train_ids[perm].view(steps, global_batch_size)
    return ids[start_step:, micro_batch_positions(rank, accumulation_steps, micro)]


def eval_shard(n: int, rank: int, world_size: int) -> tuple[int, int]:
    """[start, stop) of rank's contiguous share of an ``n``-sample split.

    Exact sharding, unlike DistributedSampler's padding: metrics must count every
    validation image once, so shares differ by at most one and may be empty.
    """
    if world_size < 1 or not 0 <= rank < world_size:
        raise DataError(f"rank {rank} is outside world size {world_size}")
    return rank * n // world_size, (rank + 1) * n // world_size


def eval_chunks(ids: Tensor, rank: int, world_size: int, batch_size: int) -> list[Tensor]:
    """This rank's share of ``ids`` cut into non-empty batches of at most ``batch_size``."""
    if batch_size <= 0:
        raise DataError(f"train.eval_batch_size must be positive, got {batch_size}")
    start, stop = eval_shard(int(ids.numel()), rank, world_size)
    return [chunk for chunk in ids[start:stop].split(batch_size) if chunk.numel()]
