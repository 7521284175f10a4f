"""Mask pasting for the ONNX export: torchvision's paste_masks_in_image as two small matrix products per mask.

torchvision pastes in a Python loop, one F.interpolate per mask to its box's size (under tracing: a scripted
loop, an ONNX Loop). Its bilinear resize is separable, so each pasted mask is Wy @ mask @ Wx^T, where Wy [H, M+2]
and Wx [W, M+2] hold the interpolation weights of the image rows and columns that the box covers (zeros
elsewhere). One batched product pastes all of them, with static-rank shapes only.

Same result as torchvision's paste (to float rounding: the products sum in another order):
    * the mask is padded by 1 px of zeros and its box scaled by (M + 2) / M about its centre, then truncated
      to integer pixels (x0, y0, x1, y1);
    * it covers rows y0..y1 and columns x0..x1 of the image (clipped to it), resized to h = max(y1 - y0 + 1, 1)
      by w = max(x1 - x0 + 1, 1) with F.interpolate's bilinear rule (align_corners=False): the source of output
      row u is (M + 2) / h * (u + 0.5) - 0.5 (interpolation_source), clamped at 0,
      between rows floor and floor + 1 (the last row snapping to itself).

Shapes: D detections, M the mask side, H x W the image.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.nn import functional as F
from torch.onnx.operators import shape_as_tensor


def paste_masks(masks: Tensor, boxes: Tensor, height: Tensor, width: Tensor, padding: int = 1) -> Tensor:
    """masks [D, 1, M, M] probabilities, boxes [D, 4] (x1, y1, x2, y2) in image pixels, the image's height and
    width (0-d Int64 tensors: traced, they follow the exported model's input) -> [D, 1, H, W]."""
    m = shape_as_tensor(masks)[-1]
    side = m + 2 * padding
    scale = side.to(boxes.dtype) / m.to(boxes.dtype)  # torchvision's expand_masks: (M + 2) / M
    padded = F.pad(masks[:, 0], (padding,) * 4)  # [D, M+2, M+2]
    x_half = (boxes[:, 2] - boxes[:, 0]) * 0.5 * scale
    y_half = (boxes[:, 3] - boxes[:, 1]) * 0.5 * scale
    x_c, y_c = (boxes[:, 2] + boxes[:, 0]) * 0.5, (boxes[:, 3] + boxes[:, 1]) * 0.5
    x0, x1 = (x_c - x_half).to(torch.int64), (x_c + x_half).to(torch.int64)
    y0, y1 = (y_c - y_half).to(torch.int64), (y_c + y_half).to(torch.int64)
    rows = _weights(y0, y1, height, side, masks.dtype)  # [D, H, M+2]
    cols = _weights(x0, x1, width, side, masks.dtype)  # [D, W, M+2]
    return torch.matmul(torch.matmul(rows, padded), cols.transpose(1, 2))[:, None]


def _weights(start: Tensor, end: Tensor, length: Tensor, side: Tensor, dtype: torch.dtype) -> Tensor:
    """Bilinear weights [D, length, side] of image rows (or columns) 0..length-1 of boxes [start, end] (Int64[D])
    over the `side` rows of the padded mask; rows outside a box get 0."""
    pixels = torch.arange(length, device=start.device)[None]  # [1, length]
    offset = pixels - start[:, None]  # [D, length]: row u of the resized mask
    inside = (offset >= 0) & (pixels <= end[:, None])
    size = (end - start + 1).clamp(min=1)
    ratio = side.to(torch.float32) / size.to(torch.float32)  # F.interpolate's: input size / output size
    src = interpolation_source(ratio[:, None], offset).clamp(min=0.0).to(dtype)
    low = src.floor()
    last = (side - 1).to(dtype)
    high = torch.where(low < last, low + 1, low)
    frac = src - low
    grid = torch.arange(side, device=start.device).to(dtype)  # [M+2]
    weights = (1.0 - frac)[..., None] * (grid == low[..., None]).to(dtype)
    weights = weights + frac[..., None] * (grid == high[..., None]).to(dtype)
    return weights * inside[..., None].to(dtype)


def interpolation_source(ratio: Tensor, dst: Tensor) -> Tensor:
    """F.interpolate's source coordinates (bilinear, align_corners=False) of output indices `dst` (Int64), for
    Float32 `ratio` = input size / output size: ratio * (dst + 0.5) - 0.5, rounded to float32 once.

    PyTorch's CPU kernels compute this expression with a fused multiply-add (one rounding; measured on the
    x86-64 wheels, AVX2 and AVX-512). Float64 reproduces that exactly: the float32 product is exact in float64,
    and so is the subtraction for coordinates below 2^46. A plain float32 product would differ in the last bit
    for about one output row in ten.
    """
    return (ratio.to(torch.float64) * (dst.to(torch.float64) + 0.5) - 0.5).to(torch.float32)
