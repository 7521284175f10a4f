"""LightningModule: trains the detector, evaluates it with COCO metrics, logs it all to TensorBoard."""

from __future__ import annotations

from typing import Any

import pytorch_lightning as pl
import torch
from omegaconf import OmegaConf
from torch import Tensor

from maskrcnn import nonfinite
from maskrcnn.distributed import all_gather_objects
from maskrcnn.evaluation import CocoEvaluator, detections_to_coco, gather_and_dedupe
from maskrcnn.model import build_model
from maskrcnn.rng_state import capture_rng_state, restore_rng_state
from maskrcnn.schedule import scaled_schedule, warmup_multistep
from maskrcnn.viz import prediction_vs_truth

Batch = tuple[list[Tensor], list[dict[str, Tensor]]]


class MaskRCNNModule(pl.LightningModule):
    """Wraps the MaskRCNN built from a full resolved run config (stored in the checkpoint as `cfg`).

    Logs per step: train/loss and every component (train/loss_mask, ...) and the lr; per validation:
    val/bbox_AP ... val/segm_APl and prediction-vs-truth images for the first `vis_images` val images.

    A step whose loss or gradients are not finite is handled by `train.nonfinite` (abort | skip) on every
    rank alike. Checkpoints carry each rank's RNG states, so a resumed run continues the same random draws.
    """

    def __init__(self, cfg: dict[str, Any], classes: list[dict[str, Any]] | None = None) -> None:
        """cfg: the resolved run config. classes: {id, name} of labels 1..K (e.g. torchvision's COCO index);
        None: the val annotations' categories in id order, K = data.num_classes."""
        super().__init__()
        self.save_hyperparameters({"cfg": cfg, "classes": classes})
        self.cfg = OmegaConf.create(cfg)
        self.classes = classes
        data = self.cfg.data
        num_classes = len(classes) if classes else data.num_classes
        self.model = build_model(self.cfg.model, self.cfg.roi, num_classes, data.image_min_size, data.image_max_size)
        self.nonfinite_policy = nonfinite.check_policy(OmegaConf.select(self.cfg, "train.nonfinite", default="abort"))
        self.metrics: dict[str, float] = {}
        self.metrics_step = -1
        self.skipped_steps = 0
        self.skipped_image_ids: set[int] = set()  # unreadable images replaced by the dataset (on_bad_image=skip)
        self._skip_this_step = False
        self._step_losses: dict[str, Tensor] = {}
        self._step_image_ids: list[int] = []
        self._predictions: list[dict[str, Any]] = []
        self.results: dict[str, list[dict]] = {}  # rank 0: the last validation's COCO results, by "bbox"/"segm"

    def forward(self, images: list[Tensor]) -> list[dict[str, Tensor]]:
        return self.model(images)

    def training_step(self, batch: Batch, batch_idx: int) -> Tensor:
        images, targets = batch
        for target in targets:
            self.skipped_image_ids.update(target.get("skipped_image_ids", ()))
        buffers_before = [b.clone() for b in self.model.buffers()]  # BatchNorm statistics: tiny to copy
        losses = self.model(images, targets)
        loss = sum(losses.values())
        self._step_losses = {name: value.detach() for name, value in losses.items()}
        self._step_image_ids = [int(t["image_id"]) for t in targets]
        finite = self.trainer.strategy.reduce_boolean_decision(bool(torch.isfinite(loss)), all=True)
        if not finite:
            self._skip_step("loss")
            for buffer, before in zip(self.model.buffers(), buffers_before, strict=True):
                buffer.copy_(before)  # the forward pass already folded NaN into the running statistics
            return nonfinite.zero_loss(self)
        self.log_dict({f"train/{name}": value for name, value in losses.items()}, batch_size=len(images))
        self.log("train/loss", loss, prog_bar=True, batch_size=len(images))
        return loss

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        # Gradients are all-reduced (and unscaled) by now, so every rank decides alike. With fp16 the
        # GradScaler already skips steps with inf gradients and lowers its scale.
        scaler_handles_it = self.trainer.precision == "16-mixed"
        if not self._skip_this_step and not scaler_handles_it and not nonfinite.gradients_finite(self):
            self._skip_step("gradient")
        if self._skip_this_step:
            optimizer.zero_grad(set_to_none=True)  # SGD leaves parameters without a gradient untouched
            self._skip_this_step = False

    def _skip_step(self, what: str) -> None:
        """Aborts, or marks the current step to be skipped (train.nonfinite)."""
        message = nonfinite.describe_step(what, self.global_step, self._step_losses, self._step_image_ids)
        nonfinite.handle(self.nonfinite_policy, f"rank {self.global_rank}: {message}")
        self._skip_this_step = True
        self.skipped_steps += 1
        self.log("train/skipped_steps", float(self.skipped_steps), batch_size=len(self._step_image_ids))

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # Every rank dumps the checkpoint (rank 0 writes it), so these collectives run on all ranks.
        checkpoint["rng_states"] = all_gather_objects(capture_rng_state())  # one per rank
        checkpoint["skipped"] = {
            "steps": self.skipped_steps,
            "image_ids": sorted(set().union(*all_gather_objects(self.skipped_image_ids))),
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        states = checkpoint.get("rng_states")
        if states:
            rank = self.global_rank if self._trainer is not None else 0
            restore_rng_state(states[rank] if rank < len(states) else states[0])
        skipped = checkpoint.get("skipped", {})
        self.skipped_steps = skipped.get("steps", 0)
        self.skipped_image_ids = set(skipped.get("image_ids", ()))

    def on_train_end(self) -> None:
        self.skipped_image_ids = set().union(*all_gather_objects(self.skipped_image_ids))

    def on_validation_epoch_start(self) -> None:
        self._predictions = []

    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        images, targets = batch
        detections = self.model(images)
        dataset = self.trainer.datamodule.val_dataset
        if self.classes:
            category_ids = {k + 1: c["id"] for k, c in enumerate(self.classes)}
            names = [c["name"] for c in self.classes]
        else:
            category_ids, names = dataset.contiguous_to_category_id, dataset.category_names
        for image, det, target in zip(images, detections, targets, strict=True):
            image_id = int(target["image_id"])
            bbox, segm = detections_to_coco(image_id, det, category_ids)
            self._predictions.append({"image_id": image_id, "bbox": bbox, "segm": segm})
            if len(self._predictions) <= self.cfg.train.vis_images and self.global_rank == 0:
                self._log_picture(image_id, image, det, target, names)

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
        schedule = scaled_schedule(self.cfg, self.trainer.world_size if self.trainer is not None else 1)
        decay, no_decay = [], []
        for param in self.parameters():
            if param.requires_grad:
                (no_decay if param.ndim <= 1 else decay).append(param)
        optimizer = torch.optim.SGD(
            [
                {"params": decay, "weight_decay": optim.weight_decay},
                {"params": no_decay, "weight_decay": 0.0},
            ],
            lr=schedule.lr,
            momentum=optim.momentum,
        )
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer,
            lambda step: warmup_multistep(
                step, schedule.warmup_iters, optim.warmup_factor, schedule.lr_steps, optim.gamma
            ),
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
