"""The detector in the form that torch.onnx.export traces: one image in, four tensors out.

ExportableMaskRCNN runs a MaskRCNN's own modules (backbone, RPN, RoI heads) in inference mode. It replaces
three steps whose PyTorch form does not trace into an ONNX graph that is right for every image size:

    * the RoI extractor's op -> its ONNX stand-in (roi_heads/export_ops.py); our fused C++ op has no ONNX form;
    * the resize of GeneralizedRCNNTransform -> the same resize, computed as PyTorch computes it (under tracing
      torchvision computes the size in float32, 1 px short for many sizes, and ONNX Resize samples at slightly
      other places);
    * the mask pasting (torchvision's paste_masks_in_image, a loop) -> maskrcnn/export_paste.py, the same
      paste as matrix products.

In PyTorch its outputs equal the model's ([image] in, detections out) to float rounding.

Shapes: D detections; the image is [3, H, W].
"""

from __future__ import annotations

import copy
from collections import OrderedDict

import torch
from torch import Tensor, nn
from torch.nn import functional as F
from torch.onnx.operators import shape_as_tensor
from torchvision.models.detection.image_list import ImageList

from maskrcnn.detector import MaskRCNN
from maskrcnn.export_paste import interpolation_source, paste_masks
from roi_heads.export_ops import export_op, export_pooler
from roi_heads.extractor import RoIExtractor

OUTPUT_NAMES = ("boxes", "labels", "scores", "masks")


class ExportableMaskRCNN(nn.Module):
    """image Float[3, H, W] in [0, 1] -> (boxes [D, 4] (x1, y1, x2, y2) in the image's pixels, labels Int64[D]
    (1..K), scores [D], masks [D, 1, H, W] probabilities): MaskRCNN's output for [image].

    Built from a copy of `model` (in eval mode) whose RoI extractors are replaced by their ONNX stand-ins (our
    RoIExtractor keeps its level mapping around its op's stand-in; a torchvision-style pooler is replaced whole);
    `roi_name` (the `roi` config's name) is for the refusal messages. Raises
    roi_heads.export_ops.ExportRefusedError for an extractor that has no export.
    """

    def __init__(self, model: MaskRCNN, roi_name: str | None = None) -> None:
        super().__init__()
        model = copy.deepcopy(model).eval()
        for branch in ("box_extractor", "mask_extractor"):
            extractor = getattr(model.roi_heads, branch)
            if isinstance(extractor, RoIExtractor):
                extractor.op = export_op(extractor.op, roi_name)
            else:
                setattr(model.roi_heads, branch, export_pooler(extractor, roi_name))
        self.model = model

    def forward(self, image: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        model = self.model
        original = shape_as_tensor(image)[-2:]  # Int64[2]: (H, W), traced as the image's shape
        resized = resize_image(model.transform.normalize(image), model.transform.min_size[-1],
                               model.transform.max_size)  # fmt: skip
        size = (resized.shape[-2], resized.shape[-1])  # ints in PyTorch; traced sizes under torch.onnx.export
        batch = pad_to_multiple(resized, model.transform.size_divisible)[None]
        features = model.backbone(batch)
        if isinstance(features, Tensor):
            features = OrderedDict([("0", features)])
        proposals, _ = model.rpn(ImageList(batch, [size]), features)
        (found,), _ = model.roi_heads(features, proposals, [size])
        boxes = rescale_boxes(found["boxes"], shape_as_tensor(resized)[-2:], original)
        return boxes, found["labels"], found["scores"], paste_masks(found["masks"], boxes, original[0], original[1])


def resize_image(image: Tensor, min_size: int, max_size: int) -> Tensor:
    """GeneralizedRCNNTransform's eval resize of [3, H, W]: short side to min_size, long side at most max_size,
    bilinear (align_corners=False), computed as PyTorch computes it, in tensors that the traced graph follows:

    * the size: scale = min(min_size / min(H, W), max_size / max(H, W)) and floor(H * scale) x floor(W * scale)
      in float64, as F.interpolate computes it in eager mode (torchvision's traced resize computes it in float32,
      1 px short for many sizes: 300 x 652 -> 613 x 1332 instead of 613 x 1333 at 800/1333);
    * the samples: PyTorch's source coordinates (maskrcnn.export_paste.interpolation_source) and its two taps
      per axis, gathered. ONNX Resize maps (dst + 0.5) / (out / in) - 0.5 instead: the last bits differ, by up
      to ~1e-4 on a noisy image, enough to move a box by 1e-3 px and with it a pasted mask's edge by a pixel.
    """
    hw = shape_as_tensor(image)[-2:]
    hw64 = hw.to(torch.float64)
    # Float64 tensors of shape [1]: the exporter computes a Python number over a tensor, or 0-d tensors, in float32.
    short, long = hw64.min(dim=0, keepdim=True).values, hw64.max(dim=0, keepdim=True).values
    scale = torch.minimum(short.new_full((1,), min_size) / short, long.new_full((1,), max_size) / long)
    new_hw = (hw64 * scale).floor().to(torch.int64)
    y_low, y_high, y_wlow, y_whigh = _linear_taps(new_hw[0:1], hw[0:1])
    x_low, x_high, x_wlow, x_whigh = _linear_taps(new_hw[1:2], hw[1:2])
    top, bottom = image.index_select(1, y_low), image.index_select(1, y_high)  # [C, h, W]
    y_wlow, y_whigh = y_wlow[:, None], y_whigh[:, None]
    return (
        (top.index_select(2, x_low) * x_wlow + top.index_select(2, x_high) * x_whigh) * y_wlow
        + (bottom.index_select(2, x_low) * x_wlow + bottom.index_select(2, x_high) * x_whigh) * y_whigh
    )  # the operation order of PyTorch's generic CPU kernel


def _linear_taps(out_len: Tensor, in_len: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """F.interpolate's linear taps along one axis (align_corners=False), lengths Int64[1] -> (low, high) Int64
    [out] and their weights Float32[out]."""
    ratio = in_len.to(torch.float32) / out_len.to(torch.float32)
    src = interpolation_source(ratio, torch.arange(out_len.squeeze(0), device=in_len.device)).clamp(min=0.0)
    low = torch.minimum(src.floor().to(torch.int64), in_len - 1)
    high = torch.where(low < in_len - 1, low + 1, low)
    frac = (src - low.to(torch.float32)).clamp(0.0, 1.0)
    return low, high, 1.0 - frac, frac


def pad_to_multiple(image: Tensor, multiple: int) -> Tensor:
    """[C, H, W] -> [C, H', W'] zero-padded at the bottom and right to multiples of `multiple` (as batch_images)."""
    h, w = image.shape[-2], image.shape[-1]
    return F.pad(image, (0, (w + multiple - 1) // multiple * multiple - w,
                         0, (h + multiple - 1) // multiple * multiple - h))  # fmt: skip


def rescale_boxes(boxes: Tensor, size: Tensor, original: Tensor) -> Tensor:
    """Boxes [D, 4] on the resized image of Int64[2] `size` (h, w) -> on the original (H, W), as torchvision's
    resize_boxes computes it (float32 ratios)."""
    ratio_h, ratio_w = (original.to(torch.float32) / size.to(torch.float32)).unbind()
    x1, y1, x2, y2 = boxes.unbind(1)
    return torch.stack((x1 * ratio_w, y1 * ratio_h, x2 * ratio_w, y2 * ratio_h), dim=1)
