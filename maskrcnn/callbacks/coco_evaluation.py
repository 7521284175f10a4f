"""COCO bbox and segm AP of the detections at every validation."""

from __future__ import annotations

from typing import Any

import pytorch_lightning as pl

from maskrcnn.coco_eval import CocoEvaluator, detections_to_coco, gather_and_dedupe


class CocoEvaluation(pl.Callback):
    """Scores the validation detections (the module's validation_step outputs) with pycocotools.

    Logs val/bbox_AP ... val/segm_APl. The evaluator, holding the ground truth, is built once, on rank 0, from
    the datamodule's val annotations. After a validation: `metrics` (flat bbox/AP ... segm/APl keys, on every
    rank), `metrics_step` (the global step they belong to) and, on rank 0, `results` (the COCO results of
    every val image, by "bbox" / "segm").
    """

    def __init__(self, backend: str = "pycocotools") -> None:
        self.backend = backend
        self.evaluator: CocoEvaluator | None = None
        self.metrics: dict[str, float] = {}
        self.metrics_step = -1
        self.results: dict[str, list[dict]] = {}
        self._predictions: list[dict[str, Any]] = []

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if self.evaluator is None and trainer.is_global_zero:
            self.evaluator = CocoEvaluator(trainer.datamodule.val_dataset.annotation_file, backend=self.backend)

    def on_validation_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._predictions = []

    def on_validation_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, *args
    ) -> None:
        category_ids = trainer.datamodule.val_dataset.contiguous_to_category_id
        for detections, target in zip(outputs, batch[1], strict=True):
            image_id = int(target["image_id"])
            bbox, segm = detections_to_coco(image_id, detections, category_ids)
            self._predictions.append({"image_id": image_id, "bbox": bbox, "segm": segm})

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        predictions = gather_and_dedupe(self._predictions)  # a padded sampler repeats images across ranks
        metrics: dict[str, float] | None = None
        if trainer.is_global_zero:
            self.results = {kind: [r for p in predictions for r in p[kind]] for kind in ("bbox", "segm")}
            image_ids = [p["image_id"] for p in predictions]
            metrics = self.evaluator.evaluate(self.results["bbox"], self.results["segm"], image_ids=image_ids)
        self.metrics = trainer.strategy.broadcast(metrics, src=0)
        self.metrics_step = trainer.global_step
        pl_module.log_dict({f"val/{k.replace('/', '_')}": v for k, v in self.metrics.items()}, sync_dist=False)
        self._predictions = []
