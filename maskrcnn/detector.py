"""The two-stage detector: torchvision's transform, backbone and RPN around our RoI heads."""

from __future__ import annotations

from collections import OrderedDict

from torch import Tensor, nn
from torchvision.models.detection.rpn import RegionProposalNetwork
from torchvision.models.detection.transform import GeneralizedRCNNTransform, resize_boxes

from maskrcnn.paste import paste_masks_in_images
from roi_heads import RoIHeads


class MaskRCNN(nn.Module):
    """images: N x Float[3, H_i, W_i] in [0, 1]; targets: N dicts with boxes, labels, masks (the instances) and,
    optionally, crowd_boxes (crowd regions: never positives; proposals on them are not sampled as negatives).

    Training returns the named loss dict; inference returns N dicts with boxes [D, 4], scores [D],
    labels [D] and masks [D, 1, H_i, W_i] (probabilities pasted at the input image size).
    """

    def __init__(
        self,
        transform: GeneralizedRCNNTransform,
        backbone: nn.Module,
        rpn: RegionProposalNetwork,
        roi_heads: RoIHeads,
    ) -> None:
        super().__init__()
        self.transform, self.backbone, self.rpn, self.roi_heads = transform, backbone, rpn, roi_heads

    def forward(
        self, images: list[Tensor], targets: list[dict[str, Tensor]] | None = None
    ) -> dict[str, Tensor] | list[dict[str, Tensor]]:
        if self.training and targets is None:
            raise ValueError("MaskRCNN needs targets in training mode")
        original_sizes = [(img.shape[-2], img.shape[-1]) for img in images]
        batch, targets = self.transform(images, targets)
        if targets is not None:  # torchvision's transform resizes boxes and masks, not the crowd regions
            for target, original, resized in zip(targets, original_sizes, batch.image_sizes, strict=True):
                if "crowd_boxes" in target:
                    target["crowd_boxes"] = resize_boxes(target["crowd_boxes"], original, resized)
        features = self.backbone(batch.tensors)
        if isinstance(features, Tensor):
            features = OrderedDict([("0", features)])
        proposals, rpn_losses = self.rpn(batch, features, targets)
        detections, head_losses = self.roi_heads(features, proposals, batch.image_sizes, targets)
        if self.training:
            return {**rpn_losses, **head_losses}
        return _to_input_images(detections, batch.image_sizes, original_sizes)


def _to_input_images(
    detections: list[dict[str, Tensor]], sizes: list[tuple[int, int]], original_sizes: list[tuple[int, int]]
) -> list[dict[str, Tensor]]:
    """The transform's postprocess with our paste: boxes scaled from the resized image back to the input image
    (torchvision's resize_boxes), and the box-frame masks [D, 1, M, M] pasted at its size [D, 1, H_i, W_i], those of
    all images in one call (torchvision's paste_masks_in_image fills and stacks a full-size image per mask)."""
    for det, size, original in zip(detections, sizes, original_sizes, strict=True):
        det["boxes"] = resize_boxes(det["boxes"], size, original)
    if detections and "masks" in detections[0]:
        masks = [det["masks"] for det in detections]
        pasted = paste_masks_in_images(masks, [det["boxes"] for det in detections], original_sizes)
        for det, image_masks in zip(detections, pasted, strict=True):
            det["masks"] = image_masks
    return detections

