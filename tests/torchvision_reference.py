"""torchvision's Mask R-CNN with random weights, as the parity tests compare against it."""

import torch
from torchvision.models.detection import MaskRCNN, maskrcnn_resnet50_fpn


def random_torchvision_maskrcnn(min_size: int, max_size: int, proposals: int, detections: int) -> MaskRCNN:
    """maskrcnn_resnet50_fpn (91 labels, seed 0) in eval mode, `proposals` RPN boxes and `detections` per image
    at test time. The class scores are spread (random weights score every class alike, so NMS ties would
    decide what is detected)."""
    torch.manual_seed(0)
    model = maskrcnn_resnet50_fpn(
        weights=None,
        weights_backbone=None,
        num_classes=91,
        min_size=min_size,
        max_size=max_size,
        rpn_pre_nms_top_n_test=proposals,
        rpn_post_nms_top_n_test=proposals,
        box_detections_per_img=detections,
    ).eval()
    torch.nn.init.normal_(model.roi_heads.box_predictor.cls_score.weight, std=0.01)
    return model
