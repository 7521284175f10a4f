"""Validations at given steps, besides every `val_check_interval` steps: e.g. every 100 steps of a schedule's tail."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import pytorch_lightning as pl


class ValidationSchedule(pl.Callback):
    """Validates after step n (1-based: after n optimizer steps) when n is a multiple of `every` or in `steps`.

    Lightning validates when (batch index + 1) is a multiple of `trainer.val_check_batch`, which it sets from
    `val_check_interval` at each epoch start; this sets it after every batch, before that check, so that the
    check passes exactly at the steps wanted. The rule depends on the step alone, so a resumed run validates
    where the straight one does.
    """

    def __init__(self, every: int, steps: Iterable[int] = ()) -> None:
        self.every = int(every)
        self.steps = {int(s) for s in steps}

    def wants(self, step: int) -> bool:
        return step % self.every == 0 or step in self.steps

    def on_train_batch_end(self, trainer: pl.Trainer, *args: Any) -> None:
        step = trainer.fit_loop.epoch_loop.total_batch_idx + 1
        trainer.val_check_batch = step if self.wants(step) else step + 1
