"""A run's convergence verdict, from its training signals alone (never from a comparison between variants).

The rule (train.convergence): the mean classifier loss over the `window` steps before the first LR decay is at
most `max_classifier_loss` (the run left the classifier's plateau before the decay froze it), and the
`report_tail` last validations' mask AP spans at most `max_tail_range` points (the tail has flattened).
"""

from __future__ import annotations

import math
import statistics
from typing import Any

import pytorch_lightning as pl


class ConvergenceCheck(pl.Callback):
    """Keeps the classifier loss of the `window` steps before `decay_step` (steps decay_step - window + 1 ..
    decay_step, 1-based); `verdict(validations)` applies the rule. Its state is checkpointed, so a resumed run
    judges the same losses as a straight one."""

    LOSS = "train/loss_classifier"

    def __init__(self, decay_step: int, window: int, max_classifier_loss: float, max_tail_range: float,
                 tail: int) -> None:  # fmt: skip
        self.decay_step, self.window = int(decay_step), int(window)
        self.max_classifier_loss, self.max_tail_range, self.tail = max_classifier_loss, max_tail_range, int(tail)
        self.losses: dict[int, float] = {}

    def on_train_batch_end(self, trainer: pl.Trainer, *args: Any) -> None:
        step = trainer.global_step
        value = trainer.callback_metrics.get(self.LOSS)
        if value is not None and self.decay_step - self.window < step <= self.decay_step:
            self.losses[step] = float(value)

    def state_dict(self) -> dict[str, Any]:
        return {"losses": dict(self.losses)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.losses = {int(k): float(v) for k, v in state_dict["losses"].items()}

    def verdict(self, validations: list[dict[str, Any]]) -> dict[str, Any]:
        """validations: [{"step", "segm/AP", ...}] in step order -> the verdict record for metrics.json."""
        loss = statistics.fmean(self.losses.values()) if len(self.losses) == self.window else None
        tail = [100 * v["segm/AP"] for v in validations[-self.tail:]] if len(validations) >= self.tail else None
        spread = max(tail) - min(tail) if tail else None
        loss_ok = loss is not None and math.isfinite(loss) and loss <= self.max_classifier_loss
        tail_ok = spread is not None and spread <= self.max_tail_range
        return {
            "met": loss_ok and tail_ok,
            "classifier_loss": loss,
            "classifier_loss_steps": [self.decay_step - self.window + 1, self.decay_step],
            "max_classifier_loss": self.max_classifier_loss,
            "tail_mask_ap_range": spread,
            "tail_steps": [v["step"] for v in validations[-self.tail:]],
            "max_tail_range": self.max_tail_range,
        }
