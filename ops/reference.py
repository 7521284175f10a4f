"""Pure PyTorch float64 reference implementations of the RoI ops (the test oracle).

Written for clarity, not speed: plain Python loops over RoIs, bins and samples, built from differentiable
tensor indexing, so ``torch.autograd`` gives the reference gradients too. Use small inputs only.

Shapes: input [N, C, H, W], rois [K, 5] = (batch_idx, x1, y1, x2, y2), output [K, C, ph, pw].
All geometry is computed with Python floats (IEEE double).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["quantize_roi", "roi_align_ref", "roi_pool_ref", "roi_warp_ref", "round_half_away"]


def round_half_away(v: float) -> int:
    """C ``round()``: half away from zero (Python's ``round`` rounds half to even)."""
    return int(math.floor(v + 0.5)) if v >= 0 else -int(math.floor(-v + 0.5))


def quantize_roi(x1: float, y1: float, x2: float, y2: float, spatial_scale: float) -> tuple[int, int, int, int]:
    """RoIPool's (and RoIWarp's) box on the feature grid: (x1, y1, w, h) in cells, corners rounded half away
    from zero, the end cell inclusive, at least one cell each way."""
    qx1, qy1 = round_half_away(x1 * spatial_scale), round_half_away(y1 * spatial_scale)
    w = max(round_half_away(x2 * spatial_scale) - qx1 + 1, 1)
    h = max(round_half_away(y2 * spatial_scale) - qy1 + 1, 1)
    return qx1, qy1, w, h


def _bilinear(plane: Tensor, y: float, x: float) -> Tensor | None:
    """Bilinear value [C] of ``plane`` [C, H, W] at (y, x); None for a sample outside [-1, H] x [-1, W]."""
    H, W = plane.shape[-2:]
    if y < -1.0 or y > H or x < -1.0 or x > W:
        return None
    y, x = max(y, 0.0), max(x, 0.0)
    y0, x0 = int(y), int(x)
    if y0 >= H - 1:
        y0 = y1 = H - 1
        y = float(y0)
    else:
        y1 = y0 + 1
    if x0 >= W - 1:
        x0 = x1 = W - 1
        x = float(x0)
    else:
        x1 = x0 + 1
    ly, lx = y - y0, x - x0
    hy, hx = 1.0 - ly, 1.0 - lx
    return (
        hy * hx * plane[:, y0, x0]
        + hy * lx * plane[:, y0, x1]
        + ly * hx * plane[:, y1, x0]
        + ly * lx * plane[:, y1, x1]
    )


def _sampled(
    input: Tensor,
    batch: int,
    start_y: float,
    start_x: float,
    size_y: float,
    size_x: float,
    ph: int,
    pw: int,
    grid_h: int,
    grid_w: int,
    max_mode: bool,
) -> Tensor:
    """Aggregate the bilinear samples of every bin of one RoI -> [C, ph, pw]."""
    plane = input[batch]
    C = plane.shape[0]
    bin_h, bin_w = size_y / ph, size_x / pw
    zero = plane.new_zeros(C)
    rows = []
    for p in range(ph):
        cols = []
        for q in range(pw):
            values = []  # raster order: iy major, ix minor
            for iy in range(grid_h):
                y = start_y + p * bin_h + (iy + 0.5) * bin_h / grid_h
                for ix in range(grid_w):
                    x = start_x + q * bin_w + (ix + 0.5) * bin_w / grid_w
                    v = _bilinear(plane, y, x)
                    values.append(zero if v is None else v)  # outside samples: value 0
            if not values:
                cols.append(zero)
            elif max_mode:
                stacked = torch.stack(values)  # [S, C]; argmax returns the first maximum
                idx = stacked.detach().argmax(dim=0, keepdim=True)
                cols.append(stacked.gather(0, idx)[0])
            else:
                cols.append(torch.stack(values).sum(0) / max(grid_h * grid_w, 1))
        rows.append(torch.stack(cols, dim=-1))
    return torch.stack(rows, dim=-2)


def _grid(size: float, pooled: int, sampling_ratio: int) -> int:
    if sampling_ratio > 0:
        return sampling_ratio
    return max(math.ceil(size / pooled), 0)


def _pair(output_size) -> tuple[int, int]:
    return (output_size, output_size) if isinstance(output_size, int) else tuple(output_size)


def roi_align_ref(
    input: Tensor,
    rois: Tensor,
    output_size,
    spatial_scale: float = 1.0,
    sampling_ratio: int = -1,
    aligned: bool = False,
    pool_mode: str = "avg",
) -> Tensor:
    """RoIAlign reference: input [N, C, H, W] (float64), rois [K, 5] -> [K, C, ph, pw]."""
    ph, pw = _pair(output_size)
    offset = 0.5 if aligned else 0.0
    outs = []
    for r in rois.detach().double().tolist():
        b, x1, y1, x2, y2 = r
        sx, sy = x1 * spatial_scale - offset, y1 * spatial_scale - offset
        w = (x2 * spatial_scale - offset) - sx
        h = (y2 * spatial_scale - offset) - sy
        if not aligned:
            w, h = max(w, 1.0), max(h, 1.0)
        outs.append(
            _sampled(
                input,
                int(b),
                sy,
                sx,
                h,
                w,
                ph,
                pw,
                _grid(h, ph, sampling_ratio),
                _grid(w, pw, sampling_ratio),
                pool_mode == "max",
            )
        )
    if not outs:
        return input.new_zeros(0, input.shape[1], ph, pw)
    return torch.stack(outs)


def roi_warp_ref(
    input: Tensor,
    rois: Tensor,
    output_size,
    spatial_scale: float = 1.0,
    sampling_ratio: int = -1,
    pool_mode: str = "max",
) -> Tensor:
    """RoIWarp reference: quantize like RoIPool, then RoIAlign(aligned=True, scale=1) on the quantized box."""
    boxes = []
    for r in rois.detach().double().tolist():
        b, *box = r
        qx1, qy1, w, h = quantize_roi(*box, spatial_scale)
        boxes.append([b, qx1, qy1, qx1 + w, qy1 + h])
    qrois = torch.tensor(boxes, dtype=torch.float64).reshape(-1, 5)
    return roi_align_ref(input, qrois, output_size, 1.0, sampling_ratio, aligned=True, pool_mode=pool_mode)


def roi_pool_ref(input: Tensor, rois: Tensor, output_size, spatial_scale: float = 1.0) -> Tensor:
    """RoIPool reference: input [N, C, H, W], rois [K, 5] -> [K, C, ph, pw] (empty bins give 0)."""
    ph, pw = _pair(output_size)
    N, C, H, W = input.shape
    outs = []
    for r in rois.detach().double().tolist():
        b, *box = r
        qx1, qy1, w, h = quantize_roi(*box, spatial_scale)
        rows = []
        for p in range(ph):
            h0 = min(max(math.floor(p * (h / ph)) + qy1, 0), H)
            h1 = min(max(math.ceil((p + 1) * (h / ph)) + qy1, 0), H)
            cols = []
            for q in range(pw):
                w0 = min(max(math.floor(q * (w / pw)) + qx1, 0), W)
                w1 = min(max(math.ceil((q + 1) * (w / pw)) + qx1, 0), W)
                if h1 <= h0 or w1 <= w0:
                    cols.append(input.new_zeros(C))
                    continue
                region = input[int(b), :, h0:h1, w0:w1].reshape(C, -1)
                idx = region.detach().argmax(dim=1, keepdim=True)  # first maximum
                cols.append(region.gather(1, idx)[:, 0])
            rows.append(torch.stack(cols, dim=-1))
        outs.append(torch.stack(rows, dim=-2))
    if not outs:
        return input.new_zeros(0, C, ph, pw)
    return torch.stack(outs)
