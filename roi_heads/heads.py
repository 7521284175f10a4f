"""RoIHeads: sampling, the box branch and the mask branch, composed from injected modules."""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torchvision.models.detection._utils import BoxCoder

from roi_heads.box_head import BoxPredictor
from roi_heads.contract import RoIPooler
from roi_heads.losses import box_losses, mask_loss, mask_targets
from roi_heads.mask_head import MaskPredictor
from roi_heads.postprocess import detect_boxes, mask_probabilities, split_per_image
from roi_heads.sampling import ProposalSampler


class RoIHeads(nn.Module):
    """Box and mask heads of Mask R-CNN on top of any RoI extractor (a pooler of roi_heads.contract).

    Training returns the loss dict (loss_classifier, loss_box_reg, loss_mask); inference returns, per
    image, boxes [D, 4], scores [D], labels [D] and masks [D, 1, M, M] (probabilities in the box frame;
    pasting into the image is the caller's transform's job).
    """

    def __init__(
        self,
        box_extractor: RoIPooler,
        box_head: nn.Module,
        box_predictor: BoxPredictor,
        mask_extractor: RoIPooler,
        mask_head: nn.Module,
        mask_predictor: MaskPredictor,
        sampler: ProposalSampler,
        box_coder: BoxCoder,
        score_thresh: float = 0.05,
        nms_thresh: float = 0.5,
        min_box_size: float = 1e-2,
        detections_per_img: int = 100,
    ) -> None:
        super().__init__()
        self.box_extractor, self.box_head, self.box_predictor = box_extractor, box_head, box_predictor
        self.mask_extractor, self.mask_head, self.mask_predictor = mask_extractor, mask_head, mask_predictor
        self.sampler, self.box_coder = sampler, box_coder
        self.score_thresh, self.nms_thresh = score_thresh, nms_thresh
        self.min_box_size, self.detections_per_img = min_box_size, detections_per_img

    def forward(
        self,
        features: dict[str, Tensor],
        proposals: list[Tensor],
        image_sizes: list[tuple[int, int]],
        targets: list[dict[str, Tensor]] | None = None,
    ) -> tuple[list[dict[str, Tensor]], dict[str, Tensor]]:
        if self.training:
            if targets is None:
                raise ValueError("RoIHeads needs targets in training mode")
            return [], self._losses(features, proposals, image_sizes, targets)
        return self._detect(features, proposals, image_sizes), {}

    def _mask_logits(
        self, features: dict[str, Tensor], boxes: list[Tensor], image_sizes: list[tuple[int, int]]
    ) -> Tensor:
        """-> [P, K+1, M, M] for the boxes of all images."""
        return self.mask_predictor(self.mask_head(self.mask_extractor(features, boxes, image_sizes)))

    def _losses(
        self,
        features: dict[str, Tensor],
        proposals: list[Tensor],
        image_sizes: list[tuple[int, int]],
        targets: list[dict[str, Tensor]],
    ) -> dict[str, Tensor]:
        sampled = self.sampler([p.detach() for p in proposals], targets)
        box_features = self.box_head(self.box_extractor(features, sampled.boxes, image_sizes))
        class_logits, box_regression = self.box_predictor(box_features)
        losses = box_losses(
            class_logits, box_regression, torch.cat(sampled.labels), torch.cat(sampled.regression_targets)
        )

        positive = [labels > 0 for labels in sampled.labels]
        pos_boxes = [boxes[pos] for boxes, pos in zip(sampled.boxes, positive, strict=True)]
        mask_logits = self._mask_logits(features, pos_boxes, image_sizes)
        crops = [
            mask_targets(target["masks"], boxes, matched[pos], mask_logits.shape[-1])
            for target, boxes, matched, pos in zip(
                targets, pos_boxes, sampled.matched_gt, positive, strict=True
            )
        ]
        pos_labels = [labels[pos] for labels, pos in zip(sampled.labels, positive, strict=True)]
        losses["loss_mask"] = mask_loss(mask_logits, torch.cat(pos_labels), torch.cat(crops))
        return losses

    def _detect(
        self, features: dict[str, Tensor], proposals: list[Tensor], image_sizes: list[tuple[int, int]]
    ) -> list[dict[str, Tensor]]:
        class_logits, box_regression = self.box_predictor(
            self.box_head(self.box_extractor(features, proposals, image_sizes))
        )
        detections = detect_boxes(
            class_logits,
            box_regression,
            proposals,
            image_sizes,
            self.box_coder,
            self.score_thresh,
            self.nms_thresh,
            self.detections_per_img,
            self.min_box_size,
        )
        mask_logits = self._mask_logits(features, [d["boxes"] for d in detections], image_sizes)
        masks = mask_probabilities(mask_logits, torch.cat([d["labels"] for d in detections]))
        for det, image_masks in zip(
            detections, split_per_image(masks, [d["boxes"] for d in detections]), strict=True
        ):
            det["masks"] = image_masks
        return detections

