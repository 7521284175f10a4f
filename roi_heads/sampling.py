"""Proposal sampling for the RoI heads: match proposals to ground truth, keep a balanced subset."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor
from torchvision.models.detection._utils import BalancedPositiveNegativeSampler, BoxCoder, Matcher
from torchvision.ops import box_iou


@dataclass
class SampledProposals:
    """Per-image training RoIs. Lists have one entry per image; R_i RoIs in image i.

    boxes: [R_i, 4] proposals.  labels: Int64[R_i], 0 = background.
    matched_gt: Int64[R_i] index of the matched GT instance, into target["boxes"] / ["masks"] (where labels > 0).
    regression_targets: [R_i, 4] encoded deltas to the matched GT.
    """

    boxes: list[Tensor]
    labels: list[Tensor]
    matched_gt: list[Tensor]
    regression_targets: list[Tensor]


class ProposalSampler:
    """Matches proposals (plus the GT boxes themselves) to GT and samples a fixed-size balanced set.

    Crowd regions (target["crowd_boxes"], optional) are ignored: a proposal that would be background but overlaps
    a crowd box by IoU >= `fg_iou_thresh` is never sampled, and crowd boxes are never positives.
    """

    def __init__(
        self,
        box_coder: BoxCoder,
        fg_iou_thresh: float = 0.5,
        bg_iou_thresh: float = 0.5,
        batch_size_per_image: int = 512,
        positive_fraction: float = 0.25,
    ) -> None:
        self.box_coder = box_coder
        self.fg_iou_thresh = fg_iou_thresh
        self.matcher = Matcher(fg_iou_thresh, bg_iou_thresh, allow_low_quality_matches=False)
        self.sampler = BalancedPositiveNegativeSampler(batch_size_per_image, positive_fraction)

    def __call__(self, proposals: list[Tensor], targets: list[dict[str, Tensor]]) -> SampledProposals:
        labels, matched = [], []
        all_boxes, all_gt_boxes = [], []
        for boxes, target in zip(proposals, targets, strict=True):
            gt_boxes, crowd_boxes = target["boxes"], target.get("crowd_boxes")
            boxes = torch.cat([boxes, gt_boxes.to(boxes.dtype)])
            image_labels, image_matched = self._match(boxes, gt_boxes, target["labels"])
            if crowd_boxes is not None and len(crowd_boxes):
                near_crowd = box_iou(boxes, crowd_boxes.to(boxes.dtype)).max(dim=1).values >= self.fg_iou_thresh
                image_labels[(image_labels == 0) & near_crowd] = -1
            all_boxes.append(boxes)
            all_gt_boxes.append(gt_boxes)
            labels.append(image_labels)
            matched.append(image_matched)

        pos_masks, neg_masks = self.sampler(labels)
        out = SampledProposals([], [], [], [])
        for boxes, gt_boxes, image_labels, image_matched, pos, neg in zip(
            all_boxes, all_gt_boxes, labels, matched, pos_masks, neg_masks, strict=True
        ):
            keep = torch.nonzero(pos | neg).squeeze(1)
            boxes, image_matched = boxes[keep], image_matched[keep]
            matched_boxes = gt_boxes[image_matched] if len(gt_boxes) else boxes  # no GT: zero deltas
            out.boxes.append(boxes)
            out.labels.append(image_labels[keep].clamp(min=0))
            out.matched_gt.append(image_matched)
            out.regression_targets.append(self.box_coder.encode_single(matched_boxes, boxes))
        return out

    def _match(self, boxes: Tensor, gt_boxes: Tensor, gt_labels: Tensor) -> tuple[Tensor, Tensor]:
        """-> (labels Int64[R]: class, 0 background, -1 ignored; matched GT index Int64[R], clamped >= 0)."""
        if gt_boxes.numel() == 0:
            zeros = torch.zeros(len(boxes), dtype=torch.int64, device=boxes.device)
            return zeros, zeros.clone()
        idx = self.matcher(box_iou(gt_boxes, boxes))
        labels = gt_labels[idx.clamp(min=0)].to(torch.int64)
        labels[idx == Matcher.BELOW_LOW_THRESHOLD] = 0
        labels[idx == Matcher.BETWEEN_THRESHOLDS] = -1
        return labels, idx.clamp(min=0)
