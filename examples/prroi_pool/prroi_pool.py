"""Precise RoI Pooling (PrRoIPool; Jiang et al., "Acquisition of Localization Confidence for Accurate Object
Detection", ECCV 2018), written as a user of this framework writes an extractor: one file, the public contract.

RoIPool quantizes the RoI, RoIAlign averages a few bilinear samples per bin; PrRoIPool integrates the bilinear
interpolant of the feature map exactly over each bin and divides by the bin's area. No sampling ratio, no
quantization, and a gradient with respect to the box coordinates as well as the features.

The interpolant is f(x, y) = sum_ij F[i, j] k(y - i) k(x - j) with the hat kernel k(t) = max(0, 1 - |t|), so
the integral over a bin [x0, x1] x [y0, y1] separates::

    out[p, q] = sum_ij Wy[p, i] F[i, j] Wx[q, j],   Wx[q, j] = (1 / (x1 - x0)) * integral_{x0}^{x1} k(x - j) dx

i.e. ``out = Wy F Wx^T`` per RoI and channel, with Wx the mean of the hat kernel of column j over bin q. Only
the columns floor(x0) .. ceil(x1) have non-zero weight: each RoI's weights are restricted to its window.

Coordinates follow our RoIAlign: ``c * spatial_scale - 0.5`` with ``aligned=True`` (pixel centres at integer
map coordinates), ``c * spatial_scale`` and the RoI size clamped to >= 1 cell without. A bin of zero width
averages to the interpolant's value at that point (the limit of the integral's mean).

Outside the map. The interpolant is built from the map's own cells only: beyond the first and last row and
column it falls linearly to 0 over one cell, and is 0 further out (zero padding). Our RoIAlign instead clamps a
sample in [-1, 0] or [H - 1, H] to the border value and gives 0 only further out. So the two agree for bins
inside [0, H - 1] x [0, W - 1] and differ at the border: PrRoIPool fades to 0 where RoIAlign holds the edge.

Used in this repo through its config, as a user's extractor is::

    python train.py roi=prroi hydra.searchpath=[file://examples/prroi_pool]

(the folder holds roi/prroi.yaml and this module, which hydra.searchpath puts on sys.path).
"""

from __future__ import annotations

import torch
from torch import Tensor

from roi_heads.contract import RoIFeatureOp

CHUNK_ROIS = 32  # RoIs pooled at once, of similar window size: bounds the padding and the windows' memory


def hat(t: Tensor) -> Tensor:
    """The bilinear interpolation kernel k(t) = max(0, 1 - |t|)."""
    return (1 - t.abs()).clamp(min=0)


def hat_integral(t: Tensor) -> Tensor:
    """K(t), the integral of the hat kernel from -inf to t: 0, (t + 1)^2 / 2, 1 - (1 - t)^2 / 2, 1 on the pieces.

    Continuously differentiable (K' = k), so autograd's derivative is exact everywhere, kinks of k included.
    """
    t = t.clamp(-1.0, 1.0)
    return torch.where(t < 0, (t + 1) ** 2 / 2, 1 - (1 - t) ** 2 / 2)


def bin_weights(edges: Tensor, cells: Tensor) -> Tensor:
    """The mean of the hat kernel of each cell over each bin.

    edges [R, S + 1] bin edges along one axis (map coordinates), cells [R, K] cell indices ->
    [R, S, K] float64: W[r, s, k] = mean over x in [edges[r, s], edges[r, s + 1]] of k(x - cells[r, k]).

    Computed as (K(hi - j) - K(lo - j)) / (hi - lo) in float64: the difference of two nearly equal values of K
    loses ~1e-16 / width there, not ~1e-7 / width as in float32, so narrow bins keep their precision. A
    zero-width bin takes the limit, the hat at that point.
    """
    edges = edges.double()
    lo, hi = edges[:, :-1, None], edges[:, 1:, None]  # [R, S, 1]
    j = cells[:, None, :].double()  # [R, 1, K]
    width = hi - lo
    safe = torch.where(width > 0, width, torch.ones_like(width))
    return torch.where(width > 0, (hat_integral(hi - j) - hat_integral(lo - j)) / safe, hat(lo - j))


class _Windows(torch.autograd.Function):
    """The [kh, kw] window of the map at (top, left) of each RoI's image -> [R, kh, C, kw] (zero past the map).

    A Python loop over RoIs of slice copies, forward and backward: each RoI moves only its window. (Advanced
    indexing with per-element indices, or a slice's autograd, which zero-fills a whole map per RoI in the
    backward, cost 10-100x more here.)
    """

    @staticmethod
    def forward(ctx, feature: Tensor, image: list[int], top: list[int], left: list[int], kh: int, kw: int):
        _, channels, height, width = feature.shape
        windows = feature.new_zeros((len(image), kh, channels, kw))
        for r, (b, t, lft) in enumerate(zip(image, top, left, strict=True)):
            hh, ww = min(kh, height - t), min(kw, width - lft)
            windows[r, :hh, :, :ww] = feature[b, :, t:t + hh, lft:lft + ww].transpose(0, 1)
        ctx.geometry = (feature.shape, image, top, left)
        return windows

    @staticmethod
    def backward(ctx, grad: Tensor):
        shape, image, top, left = ctx.geometry
        _, _, height, width = shape
        _, kh, _, kw = grad.shape
        feature_grad = grad.new_zeros(shape)
        for r, (b, t, lft) in enumerate(zip(image, top, left, strict=True)):
            hh, ww = min(kh, height - t), min(kw, width - lft)
            feature_grad[b, :, t:t + hh, lft:lft + ww] += grad[r, :hh, :, :ww].transpose(0, 1)
        return feature_grad, None, None, None, None, None


def _window(start: Tensor, end: Tensor, size: int) -> tuple[Tensor, Tensor]:
    """RoI extents [start, end] (map coordinates, [R] each) along an axis of `size` cells -> the window of
    cells with non-zero weight, floor(start) .. ceil(end) clipped to the map: (first cell, cell count), Long[R]."""
    first = torch.floor(start).long().clamp(0, size - 1)
    return first, torch.ceil(end).long().clamp(0, size - 1) - first + 1


def _axis_weights(start: Tensor, end: Tensor, first: Tensor, count: int, bins: int, size: int) -> Tensor:
    """Each bin's mean of the hat kernel of each window cell -> [R, bins, count] float64 (0 past the map)."""
    cells = first[:, None] + torch.arange(count, device=start.device)  # [R, count]
    steps = torch.arange(bins + 1, device=start.device, dtype=start.dtype) / bins
    edges = start[:, None] + (end - start)[:, None] * steps  # [R, bins + 1]
    weights = bin_weights(edges, cells)
    return torch.where(cells[:, None, :] < size, weights, torch.zeros_like(weights))


def prroi_pool(feature: Tensor, rois: Tensor, output_size: int, spatial_scale: float, aligned: bool = True) -> Tensor:
    """feature [N, C, H, W], rois [R, 5] (image index, x1, y1, x2, y2 in image px) -> [R, C, S, S].

    Differentiable (through autograd) with respect to ``feature`` and the box coordinates ``rois[:, 1:]``.
    Each RoI reads only its window of the map. RoIs go in chunks of similar window size (sorted by window
    area), each padded to its widest window: two batched matrix products per chunk.
    """
    channels, height, width = feature.shape[1:]
    if len(rois) == 0:
        return feature.new_zeros((0, channels, output_size, output_size))
    # The geometry in float32 at least: bfloat16 box coordinates would quantize the RoI, what this op avoids.
    geometry = torch.promote_types(torch.promote_types(feature.dtype, rois.dtype), torch.float32)
    box = rois[:, 1:].to(geometry) * spatial_scale - (0.5 if aligned else 0.0)
    x0, y0, x1, y1 = box.unbind(1)
    if not aligned:  # as RoIAlign: a RoI at least one cell wide and high
        x1 = x0 + (x1 - x0).clamp(min=1.0)
        y1 = y0 + (y1 - y0).clamp(min=1.0)
    top, rows = _window(y0, y1, height)
    left, cols = _window(x0, x1, width)
    order = torch.argsort(rows * cols)
    image = rois[:, 0].long()
    out = []
    for part in order.split(CHUNK_ROIS):
        kh, kw, r = int(rows[part].max()), int(cols[part].max()), len(part)
        wy = _axis_weights(y0[part], y1[part], top[part], kh, output_size, height).to(feature.dtype)  # [r, S, kh]
        wx = _axis_weights(x0[part], x1[part], left[part], kw, output_size, width).to(feature.dtype)  # [r, S, kw]
        windows = _Windows.apply(feature, image[part].tolist(), top[part].tolist(), left[part].tolist(), kh, kw)
        # [r, S, kh] @ [r, kh, C * kw] -> [r, S, C, kw]; then [r, S * C, kw] @ [r, kw, S] -> [r, S, C, S]
        pooled = (wy @ windows.reshape(r, kh, channels * kw)).reshape(r, output_size * channels, kw)
        out.append((pooled @ wx.transpose(1, 2)).reshape(r, output_size, channels, output_size).transpose(1, 2))
    return torch.cat(out)[torch.argsort(order)].contiguous()


class PrRoIPool(RoIFeatureOp):
    """Precise RoI Pooling as an op of the extractor contract (roi_heads.contract): the single-level call;
    FPN models get the contract's default ``multilevel`` (one call per level).

    Args:
        aligned: pixel-centre coordinates (``c * scale - 0.5``), as our RoIAlign's ``aligned``.
    """

    def __init__(self, aligned: bool = True) -> None:
        super().__init__()
        self.aligned = aligned

    def forward(self, feature: Tensor, rois: Tensor, output_size: int, spatial_scale: float) -> Tensor:
        """feature [N, C, H, W], rois [R, 5] -> [R, C, S, S]."""
        return prroi_pool(feature, rois, output_size, spatial_scale, self.aligned)

    def extra_repr(self) -> str:
        return f"aligned={self.aligned}"
