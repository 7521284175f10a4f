"""Pictures of the first validation images' detections beside their ground truth, in TensorBoard."""

from __future__ import annotations

from typing import Any

import pytorch_lightning as pl

from maskrcnn.viz import prediction_vs_truth


class ValidationImages(pl.Callback):
    """At every validation, rank 0 logs `val_images/<image_id>`: detections scoring >= 0.5 | ground truth, for
    the first `num_images` val images (the same images each time, so they can be compared across steps)."""

    def __init__(self, num_images: int = 4) -> None:
        self.num_images = num_images
        self._drawn = 0

    def on_validation_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._drawn = 0

    def on_validation_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, *args
    ) -> None:
        experiment = getattr(trainer.logger, "experiment", None)
        if not trainer.is_global_zero or not hasattr(experiment, "add_image"):
            return
        names = trainer.datamodule.val_dataset.category_names
        for image, target, detections in zip(*batch, outputs, strict=True):
            if self._drawn >= self.num_images:
                return
            picture = prediction_vs_truth(image, detections, target, names)
            experiment.add_image(f"val_images/{int(target['image_id'])}", picture, trainer.global_step)
            self._drawn += 1
