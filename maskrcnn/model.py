"""Builds the Mask R-CNN of a `model` config with the RoI extractor of a `roi` config."""

from __future__ import annotations

from typing import Any

from torch import nn
from torchvision.models.detection.transform import GeneralizedRCNNTransform

from maskrcnn.backbones import Backbone, build_backbone
from maskrcnn.detector import MaskRCNN
from maskrcnn.rpn import build_rpn
from roi_heads import (
    BoxPredictor,
    MaskConvHead,
    MaskPredictor,
    MLPBoxHead,
    ProposalSampler,
    Res5BoxHead,
    RoIExtractor,
    RoIHeads,
    RoIOp,
)
from roi_heads.box_coder import Float32BoxCoder

IMAGE_MEAN, IMAGE_STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]


def build_model(model: Any, roi: Any, num_classes: int, min_size: int, max_size: int) -> MaskRCNN:
    """model: the `model` config node; roi: the `roi` config node; num_classes excludes background."""
    bb = model.backbone
    backbone = build_backbone(
        bb.arch, bb.kind, bb.weights, bb.norm, bb.trainable_layers, bb.get("fpn_channels", 256)
    )
    transform = GeneralizedRCNNTransform(min_size, max_size, IMAGE_MEAN, IMAGE_STD)
    return MaskRCNN(
        transform,
        backbone.body,
        build_rpn(backbone, **model.rpn),
        build_roi_heads(model.roi_heads, roi, backbone, num_classes),
    )


def build_roi_heads(cfg: Any, roi: Any, backbone: Backbone, num_classes: int) -> RoIHeads:
    op = RoIOp(roi.kind, roi.pool_mode, roi.aligned, roi.sampling_ratio, roi.impl)

    def extractor(size: int) -> RoIExtractor:
        return RoIExtractor(
            op, backbone.featmap_names, backbone.strides, size, cfg.canonical_scale, cfg.canonical_level
        )

    box_head: nn.Module
    if backbone.res5 is not None:  # C4: res5 is the head, shared by the box and mask branches
        c5 = backbone.out_channels * 2
        box_head = Res5BoxHead(backbone.res5, c5)
        mask_head, mask_channels = backbone.res5, c5
    else:
        box_head = MLPBoxHead(backbone.out_channels, cfg.box_resolution, cfg.box_head_dim)
        mask_head = MaskConvHead(backbone.out_channels, list(cfg.mask_head_dims))
        mask_channels = mask_head.out_channels
    box_coder = Float32BoxCoder(weights=(10.0, 10.0, 5.0, 5.0))
    return RoIHeads(
        box_extractor=extractor(cfg.box_resolution),
        box_head=box_head,
        box_predictor=BoxPredictor(box_head.out_dim, num_classes),
        mask_extractor=extractor(cfg.mask_resolution),
        mask_head=mask_head,
        mask_predictor=MaskPredictor(mask_channels, cfg.mask_predictor_dim, num_classes),
        sampler=ProposalSampler(
            box_coder, cfg.fg_iou_thresh, cfg.bg_iou_thresh, cfg.batch_size_per_image, cfg.positive_fraction
        ),
        box_coder=box_coder,
        score_thresh=cfg.score_thresh,
        nms_thresh=cfg.nms_thresh,
        detections_per_img=cfg.detections_per_img,
    )
