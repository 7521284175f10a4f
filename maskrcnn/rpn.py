"""The region proposal network: torchvision's, with its box geometry kept in float32 under mixed precision."""

from __future__ import annotations

import torch
from torch import Tensor
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.image_list import ImageList
from torchvision.models.detection.rpn import RegionProposalNetwork, RPNHead

from maskrcnn.backbones import Backbone
from roi_heads.box_coder import Float32BoxCoder, geometry_dtype, to_geometry_dtype


class Float32AnchorGenerator(AnchorGenerator):
    """Anchors in float32 (float64 for float64 features) even when the feature maps are bfloat16/float16.

    torchvision makes the anchors in the feature maps' dtype, which autocast makes bfloat16. The generator
    reads only the maps' shape, dtype and device, so zero-copy float32 stand-ins (a 0-d tensor expanded to
    the map's shape) are all it gets.
    """

    def forward(self, image_list: ImageList, feature_maps: list[Tensor]) -> list[Tensor]:
        stand_ins = [
            torch.empty((), dtype=geometry_dtype(f.dtype), device=f.device).expand(f.shape) for f in feature_maps
        ]
        return super().forward(image_list, stand_ins)


class Float32RPNHead(RPNHead):
    """torchvision's RPN head (same parameters and names) whose objectness and deltas leave in float32.

    The convolutions still run in the autocast dtype; only their small outputs are cast, so the proposals,
    the top-k ranking and NMS see float32 (torchvision decodes boxes in the deltas' dtype).
    """

    def forward(self, x: list[Tensor]) -> tuple[list[Tensor], list[Tensor]]:
        """L maps [N, C, H_l, W_l] -> (L x [N, A, H_l, W_l] logits, L x [N, 4A, H_l, W_l] deltas)."""
        logits, deltas = super().forward(x)
        return [to_geometry_dtype(t) for t in logits], [to_geometry_dtype(t) for t in deltas]


def build_rpn(
    backbone: Backbone,
    anchor_sizes: list[int],
    aspect_ratios: list[float],
    fg_iou_thresh: float,
    bg_iou_thresh: float,
    batch_size_per_image: int,
    positive_fraction: float,
    pre_nms_top_n_train: int,
    post_nms_top_n_train: int,
    pre_nms_top_n_test: int,
    post_nms_top_n_test: int,
    nms_thresh: float,
    score_thresh: float,
    box_coder_weights: list[float],
) -> RegionProposalNetwork:
    """The RPN of a `model.rpn` config (its keys are this function's keywords) on top of `backbone`."""
    sizes, ratios = tuple(anchor_sizes), tuple(aspect_ratios)
    if len(backbone.featmap_names) > 1:  # FPN: one anchor size per level, plus the extra 'pool' level
        anchors = Float32AnchorGenerator(tuple((s,) for s in sizes), (ratios,) * len(sizes))
    else:
        anchors = Float32AnchorGenerator((sizes,), (ratios,))
    rpn = RegionProposalNetwork(
        anchors,
        Float32RPNHead(backbone.out_channels, anchors.num_anchors_per_location()[0]),
        fg_iou_thresh=fg_iou_thresh,
        bg_iou_thresh=bg_iou_thresh,
        batch_size_per_image=batch_size_per_image,
        positive_fraction=positive_fraction,
        pre_nms_top_n={"training": pre_nms_top_n_train, "testing": pre_nms_top_n_test},
        post_nms_top_n={"training": post_nms_top_n_train, "testing": post_nms_top_n_test},
        nms_thresh=nms_thresh,
        score_thresh=score_thresh,
    )
    rpn.box_coder = Float32BoxCoder(weights=tuple(box_coder_weights))
    return rpn
