"""Inference post-processing: scored boxes per class, NMS, top detections, mask probabilities."""

from __future__ import annotations

import torch
from torch import Tensor
from torchvision.models.detection._utils import BoxCoder
from torchvision.ops import batched_nms, clip_boxes_to_image, remove_small_boxes

from roi_heads.box_coder import to_geometry_dtype


def detect_boxes(
    class_logits: Tensor,
    box_regression: Tensor,
    proposals: list[Tensor],
    image_sizes: list[tuple[int, int]],
    box_coder: BoxCoder,
    score_thresh: float,
    nms_thresh: float,
    detections_per_img: int,
    min_box_size: float = 1e-2,
) -> list[dict[str, Tensor]]:
    """class_logits [R, K+1], box_regression [R, (K+1)*4] -> N dicts: boxes [D, 4], scores [D], labels [D].

    Keeps per class the boxes scoring above score_thresh with sides of at least min_box_size px, NMS at
    nms_thresh, then the detections_per_img best.

    Boxes and scores come out in float32 (float64 for float64 input) even when the heads ran under autocast.

    No Python number is taken from a tensor's size (len()): the ONNX export traces this function, and the tracer
    would freeze such numbers at their values for the export's image.
    """
    num_classes = class_logits.shape[1]
    boxes_all = box_coder.decode(to_geometry_dtype(box_regression), proposals).reshape(-1, num_classes, 4)
    scores_all = to_geometry_dtype(class_logits).softmax(-1)
    results = []
    for boxes, scores, size in zip(
        split_per_image(boxes_all, proposals), split_per_image(scores_all, proposals), image_sizes, strict=True
    ):
        boxes = clip_boxes_to_image(boxes, size)[:, 1:].reshape(-1, 4)
        labels = torch.arange(1, num_classes, device=scores.device).expand(scores.shape[0], -1).reshape(-1)
        scores = scores[:, 1:].reshape(-1)
        keep = torch.nonzero(scores > score_thresh).squeeze(1)
        boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
        keep = remove_small_boxes(boxes, min_size=min_box_size)
        boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
        keep = batched_nms(boxes, scores, labels, nms_thresh)[:detections_per_img]
        results.append({"boxes": boxes[keep], "scores": scores[keep], "labels": labels[keep]})
    return results


def mask_probabilities(mask_logits: Tensor, labels: Tensor) -> Tensor:
    """mask_logits [D, K+1, M, M], labels Int64[D] -> [D, 1, M, M] sigmoid of each detection's class map.

    Float32 (float64 for float64 logits) whatever the logits' dtype: the masks are pasted and thresholded next.
    The sigmoid runs over all classes before the selection, as in torchvision: a vectorised sigmoid rounds an
    element by where it falls in the vector, so only the same order gives bitwise torchvision's masks.
    """
    index = torch.arange(labels.shape[0], device=labels.device)
    return to_geometry_dtype(mask_logits).sigmoid()[index, labels][:, None]


def split_per_image(rows: Tensor, per_image: list[Tensor]) -> list[Tensor] | tuple[Tensor, ...]:
    """rows [sum L_i, ...] -> N tensors [L_i, ...], L_i = len(per_image[i]); one image's rows stay whole.

    One image is what the ONNX export traces: split() would freeze L_0 at its value for the export's image.
    """
    if len(per_image) == 1:
        return [rows]
    return rows.split([len(t) for t in per_image])
