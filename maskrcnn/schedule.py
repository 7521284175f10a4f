"""The training schedule: warmup + step decay, scaled to the real global batch as detectron2 scales it."""

from __future__ import annotations

import logging
from bisect import bisect_right
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import pytorch_lightning as pl

log = logging.getLogger(__name__)


def warmup_multistep(
    step: int, warmup_iters: int, warmup_factor: float, milestones: Sequence[int], gamma: float
) -> float:
    """Multiplier of the base lr at optimizer step `step` (0-based)."""
    decay = gamma ** bisect_right(list(milestones), step)
    if step >= warmup_iters:
        return decay
    alpha = step / warmup_iters
    return decay * (warmup_factor * (1 - alpha) + alpha)


@dataclass(frozen=True)
class Schedule:
    """The schedule a run follows, in optimizer steps, at its global batch size."""

    lr: float
    max_steps: int
    lr_steps: list[int]
    warmup_iters: int
    val_check_interval: int | float  # a float < 1 is a fraction of an epoch (Lightning), not scaled
    val_steps: list[int]  # further validations, after these steps (train.val_steps)
    checkpoint_every_n_steps: int
    global_batch_size: int
    factor: float  # steps multiplied by this (1.0: as configured)


def scaled_schedule(cfg: Any, world_size: int) -> Schedule:
    """The run config's schedule at global batch `data.module.batch_size x world_size`.

    The config gives it for a global batch of `optim.base_batch_size`. With `optim.scale_schedule` (the
    default), a different global batch scales the learning rate linearly (Goyal et al.) and every length in
    steps inversely (max_steps, the LR steps, warmup, the validation interval and steps, the checkpoint period), as
    detectron2 does: a 1-GPU run follows the 8-GPU schedule in epochs. Without it only the lr is scaled.
    """
    optim, trainer = cfg.optim, cfg.trainer
    global_batch = int(cfg.data.module.batch_size) * world_size
    ratio = global_batch / optim.base_batch_size
    factor = 1 / ratio if optim.get("scale_schedule", True) else 1.0

    val_every = trainer.val_check_interval

    def steps(n: int) -> int:
        return max(1, round(n * factor))

    return Schedule(
        lr=optim.lr * ratio,
        max_steps=steps(trainer.max_steps),
        lr_steps=[steps(s) for s in optim.steps],
        warmup_iters=round(optim.warmup_iters * factor),
        val_check_interval=steps(val_every) if isinstance(val_every, int) else val_every,
        val_steps=[steps(s) for s in cfg.train.get("val_steps", [])],
        checkpoint_every_n_steps=steps(cfg.train.checkpoint_every_n_steps),
        global_batch_size=global_batch,
        factor=factor,
    )


def log_schedule(cfg: Any, schedule: Schedule) -> None:
    """Says what was scaled, or that the base schedule runs at another batch size."""
    base = cfg.optim.base_batch_size
    if schedule.global_batch_size == base:
        return
    if schedule.factor == 1.0:
        log.warning(
            "global batch %d != optim.base_batch_size %d with optim.scale_schedule=false: lr %g -> %g, "
            "the steps as configured (%d)",
            schedule.global_batch_size, base, cfg.optim.lr, schedule.lr, schedule.max_steps,
        )  # fmt: skip
        return
    log.info(
        "schedule scaled for global batch %d (optim.base_batch_size %d, x%g steps; optim.scale_schedule=false "
        "turns it off): lr %g -> %g, max_steps %d -> %d, lr steps %s -> %s, warmup %d -> %d, "
        "val_check_interval %d -> %d, val_steps %s -> %s, checkpoint_every_n_steps %d -> %d",
        schedule.global_batch_size, base, schedule.factor, cfg.optim.lr, schedule.lr,
        cfg.trainer.max_steps, schedule.max_steps, list(cfg.optim.steps), schedule.lr_steps,
        cfg.optim.warmup_iters, schedule.warmup_iters, cfg.trainer.val_check_interval, schedule.val_check_interval,
        list(cfg.train.get("val_steps", [])), schedule.val_steps,
        cfg.train.checkpoint_every_n_steps, schedule.checkpoint_every_n_steps,
    )  # fmt: skip


def world_size(trainer_cfg: Any) -> int:
    """How many processes the `trainer` config trains with (devices x nodes), resolved as Lightning resolves it
    (auto devices, SLURM and torchrun environments), before the real Trainer is built with the scaled schedule."""
    keys = ("accelerator", "devices", "num_nodes", "strategy")
    lightning_log = logging.getLogger("pytorch_lightning")
    level = lightning_log.level
    lightning_log.setLevel(logging.WARNING)  # the probe's "GPU available: ..." lines would print twice
    try:
        probe = pl.Trainer(
            **{k: trainer_cfg[k] for k in keys if k in trainer_cfg},
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
        )
    finally:
        lightning_log.setLevel(level)
    return probe.world_size
