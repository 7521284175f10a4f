"""Drawing predictions and ground truth for TensorBoard (torchvision.utils does the drawing)."""

from __future__ import annotations

import colorsys

import torch
from torch import Tensor
from torchvision.utils import draw_bounding_boxes, draw_segmentation_masks


def draw_instances(
    image: Tensor,
    boxes: Tensor,
    masks: Tensor,
    labels: list[str],
    colors: list[tuple[int, int, int]],
    width: int = 1,
) -> Tensor:
    """image Float[3, H, W] in [0, 1], boxes [D, 4], masks Bool[D, H, W] -> UInt8[3, H, W]; boxes `width` px."""
    canvas = (image.clamp(0, 1) * 255).to(torch.uint8).cpu()
    if len(boxes):
        canvas = draw_segmentation_masks(canvas, masks.cpu(), alpha=0.45, colors=colors)
        canvas = draw_bounding_boxes(canvas, boxes.cpu(), labels=labels, colors=colors, width=width)
    return canvas


def draw_prediction(
    image: Tensor, prediction: dict[str, Tensor], class_names: list[str], score_thresh: float = 0.5, width: int = 1
) -> Tensor:
    """UInt8[3, H, W]: the detections scoring >= `score_thresh`, masks thresholded at 0.5, labelled with scores,
    boxes `width` px wide."""
    palette = _palette(len(class_names) + 1)
    keep = prediction["scores"] >= score_thresh
    labels = prediction["labels"][keep].tolist()
    return draw_instances(
        image,
        prediction["boxes"][keep],
        prediction["masks"][keep, 0] >= 0.5,
        [f"{class_names[c - 1]} {s:.2f}" for c, s in zip(labels, prediction["scores"][keep].tolist(), strict=True)],
        [palette[c] for c in labels],
        width,
    )


def draw_truth(image: Tensor, target: dict[str, Tensor], class_names: list[str]) -> Tensor:
    """UInt8[3, H, W]: the ground-truth instances, in the same class colours as draw_prediction."""
    palette = _palette(len(class_names) + 1)
    labels = target["labels"].tolist()
    return draw_instances(
        image,
        target["boxes"],
        target["masks"].bool(),
        [class_names[c - 1] for c in labels],
        [palette[c] for c in labels],
    )


def prediction_vs_truth(
    image: Tensor,
    prediction: dict[str, Tensor],
    target: dict[str, Tensor],
    class_names: list[str],
    score_thresh: float = 0.5,
) -> Tensor:
    """Side-by-side UInt8[3, H, 2W]: detections above `score_thresh` (left) and ground truth (right)."""
    return torch.cat(
        [draw_prediction(image, prediction, class_names, score_thresh), draw_truth(image, target, class_names)],
        dim=2,
    )


def _palette(n: int) -> list[tuple[int, int, int]]:
    """n well-separated colours (golden-ratio hue steps), deterministic."""
    return [tuple(int(255 * v) for v in colorsys.hsv_to_rgb((i * 0.618) % 1.0, 0.8, 1.0)) for i in range(n)]
