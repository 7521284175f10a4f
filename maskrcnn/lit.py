"""LightningModule: trains the detector, evaluates it with COCO metrics, logs it all to TensorBoard."""

from __future__ import annotations

import math
from typing import Any

import pytorch_lightning as pl
import torch
from omegaconf import OmegaConf
from torch import Tensor

from maskrcnn.evaluation import CocoEvaluator, detections_to_coco, gather_and_dedupe
from maskrcnn.model import build_model
from maskrcnn.schedule import scaled_lr, warmup_multistep
from maskrcnn.viz import prediction_vs_truth

Batch = tuple[list[Tensor], list[dict[str, Tensor]]]


class MaskRCNNModule(pl.LightningModule):
    """Wraps the MaskRCNN built from a full resolved run config (stored in the checkpoint as `cfg`).

    Logs per step: train/loss and every component (train/loss_mask, ...) and the lr; per validation:
    val/bbox_AP ... val/segm_APl and prediction-vs-truth images for the first `vis_images` val images.
    """

    def __init__(self, cfg: dict[str, Any]) -> None:
        super().__init__()
        self.save_hyperparameters({"cfg": cfg})
        self.cfg = OmegaConf.create(cfg)
        data = self.cfg.data
        self.model = build_model(
            self.cfg.model, self.cfg.roi, data.num_classes, data.image_min_size, data.image_max_size
        )
        self.metrics: dict[str, float] = {}
        self.metrics_step = -1
        self._predictions: list[dict[str, Any]] = []
        self.results: dict[
            str, list[dict]
        ] = {}  # rank 0: the last validation's COCO results, by "bbox"/"segm"

    def forward(self, images: list[Tensor]) -> list[dict[str, Tensor]]:
        return self.model(images)

    def training_step(self, batch: Batch, batch_idx: int) -> Tensor:
        images, targets = batch
        losses = self.model(images, targets)
        loss = sum(losses.values())
        self.log_dict({f"train/{name}": value for name, value in losses.items()}, batch_size=len(images))
        self.log("train/loss", loss, prog_bar=True, batch_size=len(images))
        return loss

    def on_validation_epoch_start(self) -> None:
        self._predictions = []

    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        images, targets = batch
        detections = self.model(images)
        dataset = self.trainer.datamodule.val_dataset
        for image, det, target in zip(images, detections, targets, strict=True):
            image_id = int(target["image_id"])
            bbox, segm = detections_to_coco(image_id, det, dataset.contiguous_to_category_id)
            self._predictions.append({"image_id": image_id, "bbox": bbox, "segm": segm})
            if len(self._predictions) <= self.cfg.train.vis_images and self.global_rank == 0:
                self._log_picture(image_id, image, det, target, dataset.category_names)

    def on_validation_epoch_end(self) -> None:
        predictions = gather_and_dedupe(self._predictions)
        metrics: dict[str, float] | None = None
        if self.trainer.is_global_zero:
            self.results = {kind: [r for p in predictions for r in p[kind]] for kind in ("bbox", "segm")}
            dataset = self.trainer.datamodule.val_dataset
            evaluator = CocoEvaluator(dataset.annotation_file, backend=self.cfg.eval.backend)
            metrics = evaluator.evaluate(
                self.results["bbox"], self.results["segm"], image_ids=[p["image_id"] for p in predictions]
            )
        metrics = self.trainer.strategy.broadcast(metrics, src=0)
        self.metrics, self.metrics_step = metrics, self.global_step
        self.log_dict({f"val/{k.replace('/', '_')}": v for k, v in metrics.items()}, sync_dist=False)
        self._predictions = []

    def _log_picture(
        self, image_id: int, image: Tensor, det: dict[str, Tensor], target: dict, names: list[str]
    ) -> None:
        if self.logger is None or not hasattr(self.logger.experiment, "add_image"):
            return
        picture = prediction_vs_truth(image, det, target, names)
        self.logger.experiment.add_image(f"val_images/{image_id}", picture, self.global_step)

    def configure_optimizers(self) -> dict[str, Any]:
        optim = self.cfg.optim
        world = self.trainer.world_size if self.trainer is not None else 1
        lr = scaled_lr(optim.lr, optim.base_batch_size, self.cfg.data.module.batch_size * world)
        decay, no_decay = [], []
        for param in self.parameters():
            if param.requires_grad:
                (no_decay if param.ndim <= 1 else decay).append(param)
        optimizer = torch.optim.SGD(
            [
                {"params": decay, "weight_decay": optim.weight_decay},
                {"params": no_decay, "weight_decay": 0.0},
            ],
            lr=lr,
            momentum=optim.momentum,
        )
        steps = [math.floor(s) for s in optim.steps]
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer,
            lambda step: warmup_multistep(step, optim.warmup_iters, optim.warmup_factor, steps, optim.gamma),
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
