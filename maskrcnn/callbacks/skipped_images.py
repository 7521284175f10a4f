"""Counts the unreadable training images the dataset skipped (data.module.on_bad_image=skip)."""

from __future__ import annotations

from typing import Any

import pytorch_lightning as pl

from maskrcnn.distributed import all_gather_objects


class SkippedImages(pl.Callback):
    """Collects the ids a batch's targets list under `skipped_image_ids` (whichever worker read them), on
    every rank; `image_ids` holds all ranks' after training. Kept in the checkpoint ("skipped" / "image_ids")."""

    def __init__(self) -> None:
        self.image_ids: set[int] = set()

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, *args) -> None:
        for target in batch[1]:
            self.image_ids.update(target.get("skipped_image_ids", ()))

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.image_ids = set().union(*all_gather_objects(self.image_ids))

    def on_save_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict) -> None:
        # Every rank dumps the checkpoint, so this collective runs on all ranks.
        gathered = sorted(set().union(*all_gather_objects(self.image_ids)))
        checkpoint.setdefault("skipped", {})["image_ids"] = gathered

    def on_load_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict) -> None:
        self.image_ids = set(checkpoint.get("skipped", {}).get("image_ids", ()))
