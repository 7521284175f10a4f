"""Builds the Mask R-CNN of a `model` config with the RoI extractor of a `roi` config."""

from __future__ import annotations

from typing import Any

from torch import nn
from torchvision.models.detection._utils import BoxCoder
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.rpn import RegionProposalNetwork, RPNHead
from torchvision.models.detection.transform import GeneralizedRCNNTransform

from maskrcnn.backbones import Backbone, build_backbone
from maskrcnn.detector import MaskRCNN
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
        build_rpn(model.rpn, backbone),
        build_roi_heads(model.roi_heads, roi, backbone, num_classes),
    )


def build_rpn(cfg: Any, backbone: Backbone) -> RegionProposalNetwork:
    sizes, ratios = tuple(cfg.anchor_sizes), tuple(cfg.aspect_ratios)
    if len(backbone.featmap_names) > 1:  # FPN: one anchor size per level, plus the extra 'pool' level
        anchors = AnchorGenerator(tuple((s,) for s in sizes), (ratios,) * len(sizes))
    else:
        anchors = AnchorGenerator((sizes,), (ratios,))
    head = RPNHead(backbone.out_channels, anchors.num_anchors_per_location()[0])
    return RegionProposalNetwork(
        anchors,
        head,
        fg_iou_thresh=0.7,
        bg_iou_thresh=0.3,
        batch_size_per_image=cfg.batch_size_per_image,
        positive_fraction=0.5,
        pre_nms_top_n={"training": cfg.pre_nms_top_n_train, "testing": cfg.pre_nms_top_n_test},
        post_nms_top_n={"training": cfg.post_nms_top_n_train, "testing": cfg.post_nms_top_n_test},
        nms_thresh=0.7,
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
    box_coder = BoxCoder(weights=(10.0, 10.0, 5.0, 5.0))
    return RoIHeads(
        box_extractor=extractor(cfg.box_resolution),
        box_head=box_head,
        box_predictor=BoxPredictor(box_head.out_dim, num_classes),
        mask_extractor=extractor(cfg.mask_resolution),
        mask_head=mask_head,
        mask_predictor=MaskPredictor(mask_channels, cfg.mask_predictor_dim, num_classes),
        sampler=ProposalSampler(box_coder, 0.5, 0.5, cfg.batch_size_per_image, cfg.positive_fraction),
        box_coder=box_coder,
        score_thresh=cfg.score_thresh,
        nms_thresh=cfg.nms_thresh,
        detections_per_img=cfg.detections_per_img,
    )
