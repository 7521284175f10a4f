"""What to do when a training step produces a non-finite loss or gradient: abort, or skip the step."""

from __future__ import annotations

import logging

import torch
from torch import Tensor, nn

log = logging.getLogger(__name__)

POLICIES = ("abort", "skip")


class NonFiniteLossError(FloatingPointError):
    """A step's loss or gradient is NaN or inf; the weights have not been updated with it."""


def check_policy(policy: str) -> str:
    if policy not in POLICIES:
        raise ValueError(f"train.nonfinite must be one of {POLICIES}, got {policy!r}")
    return policy


def describe_step(what: str, step: int, losses: dict[str, Tensor], image_ids: list[int]) -> str:
    """One line: the step, every loss component and the batch's image ids."""
    parts = ", ".join(f"{name}={float(value):.4g}" for name, value in losses.items())
    return f"non-finite {what} at step {step}: {parts}; batch image ids {image_ids}"


def handle(policy: str, message: str) -> None:
    """Raises NonFiniteLossError for "abort"; logs a warning for "skip"."""
    if policy == "abort":
        raise NonFiniteLossError(
            f"{message}. Stopped before the optimizer step, so the weights and the last checkpoint are intact. "
            "Set train.nonfinite=skip to skip such steps instead."
        )
    log.warning("%s; skipping this optimizer step", message)


def zero_loss(module: nn.Module) -> Tensor:
    """A zero that depends on every trainable parameter: backward gives all-zero gradients on every rank,
    so DDP's gradient all-reduce runs as usual when a step is skipped."""
    return sum(p.sum() for p in module.parameters() if p.requires_grad) * 0.0


def gradients_finite(module: nn.Module) -> bool:
    """Whether every gradient is finite (one host sync)."""
    grads = [p.grad for p in module.parameters() if p.grad is not None]
    if not grads:
        return True
    return bool(torch.isfinite(torch.nn.utils.get_total_norm(grads)))
