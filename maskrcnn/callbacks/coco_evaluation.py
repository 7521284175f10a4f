"""COCO bbox and segm AP of the detections at every validation, overall, per class and as PR curves."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytorch_lightning as pl

from maskrcnn.coco_eval import CocoEvaluator, CocoScores, PRCurve, detections_to_coco, gather_and_dedupe


class CocoEvaluation(pl.Callback):
    """Scores the validation detections (the module's validation_step outputs) with pycocotools.

    Logs val/bbox_AP ... val/segm_APl; to TensorBoard also each class's AP (val_per_class/<kind>_AP/<class>)
    and the precision-recall curves at IoU 0.5 and 0.75 (PR curves tab, pr/<kind>_iou50, pr/<kind>_iou75),
    both from the same COCOeval run. The evaluator, holding the ground truth, is built once, on rank 0, from
    the datamodule's val annotations. After a validation: `metrics` (flat bbox/AP ... segm/APl keys, on every
    rank), `metrics_step` (the global step they belong to) and, on rank 0, `results` (the COCO results of
    every val image, by "bbox" / "segm") and `per_class` (CocoScores.per_class). `history` holds every
    validation of the run, [{"step", **metrics}] in step order; it is checkpointed, so a resumed run keeps the
    validations made before it was stopped.
    """

    def __init__(self, backend: str = "pycocotools") -> None:
        self.backend = backend
        self.evaluator: CocoEvaluator | None = None
        self.metrics: dict[str, float] = {}
        self.metrics_step = -1
        self.results: dict[str, list[dict]] = {}
        self.per_class: dict[str, list[dict[str, Any]]] = {}
        self.history: list[dict[str, Any]] = []
        self._predictions: list[dict[str, Any]] = []

    def state_dict(self) -> dict[str, Any]:
        return {"history": [dict(h) for h in self.history]}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.history = [dict(h) for h in state_dict.get("history", [])]

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
            scores = self.evaluator.score(self.results["bbox"], self.results["segm"], image_ids=image_ids)
            metrics, self.per_class = scores.metrics, scores.per_class
            _log_details(trainer, scores)
        self.metrics = trainer.strategy.broadcast(metrics, src=0)
        self.metrics_step = trainer.global_step
        self.history = [h for h in self.history if h["step"] != self.metrics_step]  # a repeat replaces its step's
        self.history.append({"step": self.metrics_step, **self.metrics})
        pl_module.log_dict({f"val/{k.replace('/', '_')}": v for k, v in self.metrics.items()}, sync_dist=False)
        self._predictions = []


def _log_details(trainer: pl.Trainer, scores: CocoScores) -> None:
    """Per-class AP scalars and PR curves to TensorBoard, on rank 0 (no other logger takes them)."""
    experiment = getattr(trainer.logger, "experiment", None)
    if not hasattr(experiment, "add_pr_curve_raw"):
        return
    step = trainer.global_step
    for kind, rows in scores.per_class.items():
        for row in rows:
            experiment.add_scalar(f"val_per_class/{kind}_AP/{row['name']}", row["AP"], step)
    for kind, curves in scores.pr_curves.items():
        for curve in curves:
            experiment.add_pr_curve_raw(f"pr/{kind}_iou{round(curve.iou * 100)}", *_counts(curve), global_step=step,
                                        num_thresholds=len(curve.recall))  # fmt: skip


def _counts(curve: PRCurve) -> tuple[np.ndarray, ...]:
    """The PR-curve plugin's (TP, FP, TN, FN, precision, recall), ordered as it expects: recall falling.

    COCOeval keeps precision at fixed recall points, not per score threshold, so the counts are derived:
    TP = recall x num_gt, FP = TP (1 - precision) / precision (0 where precision is 0), FN = num_gt - TP, TN = 0.
    The curve drawn is exactly COCOeval's precision against recall.
    """
    recall, precision = np.asarray(curve.recall)[::-1], np.asarray(curve.precision)[::-1]
    tp = recall * curve.num_gt
    fp = np.divide(tp * (1 - precision), precision, out=np.zeros_like(tp), where=precision > 0)
    return tp, fp, np.zeros_like(tp), curve.num_gt - tp, precision, recall
