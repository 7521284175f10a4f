"""Builds the Mask R-CNN of a `model` config around the RoI extractor of a `roi` config.

The config sections are the builders' keyword arguments: `model.backbone` and `roi` are instantiated through
their `_target_`, `model.rpn` and `model.roi_heads` feed `build_rpn` / `build_roi_heads`. Every size and
threshold lives in configs/model/*.yaml. The `roi` config's extractor is built by maskrcnn.roi_extractors.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from hydra.utils import instantiate
from torch import nn
from torchvision.models.detection.transform import GeneralizedRCNNTransform

from maskrcnn.backbones import Backbone
from maskrcnn.detector import MaskRCNN
from maskrcnn.roi_extractors import build_poolers
from maskrcnn.rpn import build_rpn
from roi_heads import (
    BoxPredictor,
    MaskConvHead,
    MaskPredictor,
    MLPBoxHead,
    ProposalSampler,
    Res5BoxHead,
    RoIHeads,
)
from roi_heads.box_coder import Float32BoxCoder

IMAGE_MEAN, IMAGE_STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]


def build_model(
    model: Mapping[str, Any], roi: Mapping[str, Any], num_classes: int, min_size: int, max_size: int
) -> MaskRCNN:
    """model: the `model` config; roi: the `roi` config; num_classes excludes background; images are resized to
    a short side of min_size, a long side of at most max_size."""
    backbone: Backbone = instantiate(model["backbone"])
    transform = GeneralizedRCNNTransform(min_size, max_size, IMAGE_MEAN, IMAGE_STD)
    heads = build_roi_heads(backbone, roi, num_classes, **model["roi_heads"])
    return MaskRCNN(transform, backbone.body, build_rpn(backbone, **model["rpn"]), heads)


def build_roi_heads(
    backbone: Backbone,
    roi: Mapping[str, Any],
    num_classes: int,
    *,
    box_resolution: int,
    box_head_dim: int,
    mask_resolution: int,
    mask_head_dims: list[int],
    mask_predictor_dim: int,
    fg_iou_thresh: float,
    bg_iou_thresh: float,
    batch_size_per_image: int,
    positive_fraction: float,
    canonical_scale: float,
    canonical_level: int,
    box_coder_weights: list[float],
    score_thresh: float,
    nms_thresh: float,
    min_box_size: float,
    detections_per_img: int,
) -> RoIHeads:
    """The RoI heads of a `model.roi_heads` config (its keys are the keywords here), around the extractor of the
    `roi` config (build_poolers).

    With a C4 backbone, res5 is the head shared by the box and mask branches (Mask R-CNN, Fig. 4 left), and
    box_head_dim / mask_head_dims (the FPN and C5 heads' sizes) are not used.
    """

    poolers = build_poolers(
        roi, backbone, {"box": box_resolution, "mask": mask_resolution}, canonical_scale, canonical_level
    )
    box_head: nn.Module
    if backbone.res5 is not None:
        c5 = backbone.out_channels * 2
        box_head = Res5BoxHead(backbone.res5, c5)
        mask_head, mask_channels = backbone.res5, c5
    else:
        box_head = MLPBoxHead(backbone.out_channels, box_resolution, box_head_dim)
        mask_head = MaskConvHead(backbone.out_channels, list(mask_head_dims))
        mask_channels = mask_head.out_channels
    box_coder = Float32BoxCoder(weights=tuple(box_coder_weights))
    return RoIHeads(
        box_extractor=poolers["box"],
        box_head=box_head,
        box_predictor=BoxPredictor(box_head.out_dim, num_classes),
        mask_extractor=poolers["mask"],
        mask_head=mask_head,
        mask_predictor=MaskPredictor(mask_channels, mask_predictor_dim, num_classes),
        sampler=ProposalSampler(box_coder, fg_iou_thresh, bg_iou_thresh, batch_size_per_image, positive_fraction),
        box_coder=box_coder,
        score_thresh=score_thresh,
        nms_thresh=nms_thresh,
        min_box_size=min_box_size,
        detections_per_img=detections_per_img,
    )
