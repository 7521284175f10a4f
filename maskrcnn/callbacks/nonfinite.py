"""The non-finite guard: a step whose loss or gradients are NaN/inf aborts the run, or is skipped."""

from __future__ import annotations

import logging
from typing import Any

import pytorch_lightning as pl
import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

log = logging.getLogger(__name__)

POLICIES = ("abort", "skip")


class NonFiniteLossError(FloatingPointError):
    """A step's loss or gradient is NaN or inf; the weights have not been updated with it."""


class NonFiniteGuard(pl.Callback):
    """Checks each step before the optimizer does, on every rank alike (gradients are all-reduced by then).

    policy "abort" raises NonFiniteLossError naming the step, every loss component and the batch's image ids;
    "skip" drops the gradients (SGD leaves parameters without one untouched), puts back the BatchNorm running
    statistics the forward pass already updated, logs train/skipped_steps and goes on. With fp16 mixed
    precision the GradScaler skips steps with inf gradients itself, so only the loss is checked.
    `skipped_steps` is kept in the checkpoint ("skipped" / "steps").
    """

    def __init__(self, policy: str = "abort") -> None:
        if policy not in POLICIES:
            raise ValueError(f"train.nonfinite must be one of {POLICIES}, got {policy!r}")
        self.policy = policy
        self.skipped_steps = 0
        self._image_ids: list[int] = []
        self._statistics: list[Tensor] = []

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, *args) -> None:
        self._image_ids = [int(target["image_id"]) for target in batch[1]]
        self._statistics = [s.clone() for s in _running_statistics(pl_module)]  # a few KB: means and variances

    def on_before_optimizer_step(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: torch.optim.Optimizer
    ) -> None:
        metrics = trainer.callback_metrics  # this step's train/loss and train/loss_*, logged by training_step
        losses = {k.removeprefix("train/"): v for k, v in metrics.items() if k.startswith("train/loss")}
        loss_finite = bool(torch.isfinite(losses["loss"]))
        if trainer.strategy.reduce_boolean_decision(loss_finite, all=True):
            if trainer.precision == "16-mixed" or gradients_finite(pl_module):
                return
            what = "gradient"
        else:
            what = "loss"
        components = {name: value for name, value in losses.items() if name != "loss"}
        message = describe_step(what, trainer.global_step, components, self._image_ids)
        if self.policy == "abort":
            raise NonFiniteLossError(
                f"rank {trainer.global_rank}: {message}. Stopped before the optimizer step, so the weights and the "
                "last checkpoint are intact. Set train.nonfinite=skip to skip such steps instead."
            )
        log.warning("rank %d: %s; skipping this optimizer step", trainer.global_rank, message)
        optimizer.zero_grad(set_to_none=True)
        for statistic, before in zip(_running_statistics(pl_module), self._statistics, strict=True):
            statistic.copy_(before)
        self.skipped_steps += 1
        pl_module.log("train/skipped_steps", float(self.skipped_steps), batch_size=len(self._image_ids))

    def on_save_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict) -> None:
        checkpoint.setdefault("skipped", {})["steps"] = self.skipped_steps

    def on_load_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict) -> None:
        self.skipped_steps = checkpoint.get("skipped", {}).get("steps", 0)


def describe_step(what: str, step: int, losses: dict[str, Tensor], image_ids: list[int]) -> str:
    """One line: the step, every loss component and the batch's image ids."""
    parts = ", ".join(f"{name}={float(value):.4g}" for name, value in losses.items())
    return f"non-finite {what} at step {step}: {parts}; batch image ids {image_ids}"


def gradients_finite(module: nn.Module) -> bool:
    """Whether every gradient is finite (one host sync)."""
    grads = [p.grad for p in module.parameters() if p.grad is not None]
    if not grads:
        return True
    return bool(torch.isfinite(torch.nn.utils.get_total_norm(grads)))


def _running_statistics(module: nn.Module) -> list[Tensor]:
    """The buffers a training forward pass updates: BatchNorm running means, variances and batch counts."""
    return [
        buffer
        for m in module.modules()
        if isinstance(m, _BatchNorm) and m.training and m.track_running_stats
        for buffer in (m.running_mean, m.running_var, m.num_batches_tracked)
    ]
