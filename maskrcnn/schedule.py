"""Learning-rate schedule: per-step linear warmup, then step decay at fixed iterations."""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Sequence


def warmup_multistep(
    step: int, warmup_iters: int, warmup_factor: float, milestones: Sequence[int], gamma: float
) -> float:
    """Multiplier of the base lr at optimizer step `step` (0-based)."""
    decay = gamma ** bisect_right(list(milestones), step)
    if step >= warmup_iters:
        return decay
    alpha = step / warmup_iters
    return decay * (warmup_factor * (1 - alpha) + alpha)


def scaled_lr(base_lr: float, base_batch_size: int, global_batch_size: int) -> float:
    """Linear scaling rule (Goyal et al.): lr grows with the global batch size."""
    return base_lr * global_batch_size / base_batch_size
