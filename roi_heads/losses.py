"""Fast R-CNN and Mask R-CNN losses."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

import ops


def box_losses(
    class_logits: Tensor, box_regression: Tensor, labels: Tensor, regression_targets: Tensor
) -> dict[str, Tensor]:
    """class_logits [R, K+1], box_regression [R, (K+1)*4], labels Int64[R], regression_targets [R, 4].

    Cross-entropy over all sampled RoIs; smooth-L1 (beta 1/9) on the positives' class-specific deltas,
    normalised by R as in Fast R-CNN.
    """
    loss_classifier = F.cross_entropy(class_logits, labels)
    pos = torch.nonzero(labels > 0).squeeze(1)
    deltas = box_regression.reshape(len(labels), -1, 4)[pos, labels[pos]]
    loss_box = F.smooth_l1_loss(deltas, regression_targets[pos], beta=1 / 9, reduction="sum")
    return {"loss_classifier": loss_classifier, "loss_box_reg": loss_box / max(labels.numel(), 1)}


def mask_targets(gt_masks: Tensor, boxes: Tensor, matched_gt: Tensor, size: int) -> Tensor:
    """Crops each RoI's matched GT mask and resamples it to size x size with aligned RoIAlign.

    gt_masks UInt8[G, H, W], boxes [P, 4], matched_gt Int64[P] -> Float[P, size, size] in {0, 1}.
    """
    if len(boxes) == 0:
        return boxes.new_zeros((0, size, size))
    rois = torch.cat([matched_gt[:, None].to(boxes.dtype), boxes], dim=1)
    # validate=False: matched_gt indexes gt_masks by construction; the check would cost a GPU sync per image.
    crops = ops.roi_align(gt_masks[:, None].to(boxes.dtype), rois, (size, size), 1.0, 0, True, validate=False)
    return (crops[:, 0] >= 0.5).to(boxes.dtype)


def mask_loss(mask_logits: Tensor, labels: Tensor, targets: Tensor) -> Tensor:
    """mask_logits [P, K+1, M, M], labels Int64[P] (> 0), targets [P, M, M] -> per-pixel binary CE.

    With no positives the loss is 0 but stays connected to the mask branch, so DDP sees every parameter.
    """
    if len(labels) == 0:
        return mask_logits.sum() * 0
    logits = mask_logits[torch.arange(len(labels), device=labels.device), labels]
    return F.binary_cross_entropy_with_logits(logits, targets)
