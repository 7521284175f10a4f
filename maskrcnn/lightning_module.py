"""The LightningModule: the detector, its training and validation steps, its optimizer and schedule."""

from __future__ import annotations

from typing import Any

import pytorch_lightning as pl
import torch
from hydra.utils import instantiate
from torch import Tensor

from maskrcnn.builders import build_model
from maskrcnn.schedule import warmup_multistep

Batch = tuple[list[Tensor], list[dict[str, Tensor]]]
CHECKPOINT_FORMAT = 2  # 1: hyper_parameters {"cfg": run config} (before the callbacks); 2: this module's arguments


class DetectorModule(pl.LightningModule):
    """Mask R-CNN as Lightning trains it; COCO evaluation, pictures and the non-finite guard are callbacks
    (maskrcnn/callbacks/). Logs train/loss and every component per step.

    Args (all saved as hyper-parameters, so a checkpoint rebuilds its module):
        model, roi: the `model` and `roi` configs (maskrcnn.builders.build_model).
        classes: [{"id", "name"}] of labels 1..K: the training annotations' categories (or torchvision's COCO
            label index for converted weights).
        image_min_size, image_max_size: the detector's resize.
        optim: the `optim` config, its lr, steps and warmup_iters already scaled to the run's global batch.
        run_config: the whole resolved run config, for evaluate.py and the analysis tools; not read here.
        channels_last: the detector's 4-d weights, and so its feature maps, in NHWC: oneDNN's convolutions are
            faster on it (bench/channels_last.py), and our RoI ops read NHWC maps as they are. The same weights
            give the same losses to float32 rounding (tests/test_channels_last.py); False for checkpoints from
            before the switch, so they evaluate in the layout they trained in.
    """

    def __init__(
        self,
        model: dict[str, Any],
        roi: dict[str, Any],
        classes: list[dict[str, Any]],
        image_min_size: int,
        image_max_size: int,
        optim: dict[str, Any],
        run_config: dict[str, Any] | None = None,
        channels_last: bool = False,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.model = build_model(model, roi, len(classes), image_min_size, image_max_size)
        if channels_last:
            self.model.to(memory_format=torch.channels_last)

    def forward(self, images: list[Tensor]) -> list[dict[str, Tensor]]:
        return self.model(images)

    def training_step(self, batch: Batch, batch_idx: int) -> Tensor:
        images, targets = batch
        losses = self.model(images, targets)
        loss = sum(losses.values())
        self.log_dict({f"train/{name}": value for name, value in losses.items()}, batch_size=len(images))
        self.log("train/loss", loss, prog_bar=True, batch_size=len(images))
        return loss

    def validation_step(self, batch: Batch, batch_idx: int) -> list[dict[str, Tensor]]:
        """-> the detections, which the callbacks score and draw."""
        return self.model(batch[0])

    def configure_optimizers(self) -> dict[str, Any]:
        optim = self.hparams.optim
        decay, no_decay = [], []
        for param in self.parameters():
            if param.requires_grad:
                (no_decay if param.ndim <= 1 else decay).append(param)
        groups = [{"params": decay, "weight_decay": optim["weight_decay"]}, {"params": no_decay, "weight_decay": 0.0}]
        optimizer = instantiate(optim["optimizer"])(groups, lr=optim["lr"])
        schedule = torch.optim.lr_scheduler.LambdaLR(
            optimizer,
            lambda step: warmup_multistep(
                step, optim["warmup_iters"], optim["warmup_factor"], optim["steps"], optim["gamma"]
            ),
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["checkpoint_format"] = CHECKPOINT_FORMAT
