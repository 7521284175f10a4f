"""Functional RoI ops: ``roi_align``, ``roi_pool``, ``roi_warp``.

Shapes: N images, C channels, H x W feature map, K RoIs, output ph x pw.

* ``input``: Tensor[N, C, H, W] (any memory layout; float64/float32/float16/bfloat16).
* ``boxes``: Tensor[K, 5] rows ``(batch_idx, x1, y1, x2, y2)``, or a list of N Tensor[L_i, 4] rows
  ``(x1, y1, x2, y2)`` (one per image), exactly as ``torchvision.ops`` takes them, in input-image coordinates
  and on the input's device. Any floating dtype: for float32/float64 input the boxes are cast to the input
  dtype; for float16/bfloat16 input they are used in float32 (pass float32 boxes; half/bfloat16 boxes are
  upcast). Rounding to bfloat16 would snap a corner near x = 1000 px to a multiple of 4 px, the very
  misalignment RoIAlign exists to remove, so the geometry never runs in the low-precision dtype. This is
  also what ``torch.autocast`` produces: bfloat16 features with float32 boxes.
* returns Tensor[K, C, ph, pw] in the input's dtype; differentiable w.r.t. ``input``.

VALIDATE. Shapes, dtypes and devices are always checked. With ``validate=True`` (the default) the box
values are checked too: finite coordinates and integer batch indices in ``[0, N)`` (plus the levels of
:func:`multilevel_roi`), each error naming the offending row. On the GPU that check reads the values back
to the host, one sync per call; a caller that builds the boxes itself (the detector's RoI heads) passes
``validate=False``. The kernels never read out of bounds either way: on the GPU a RoI with a bad batch
index or level outputs 0 and gets no gradient, and a non-finite box has no valid samples.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from . import _registration  # loads the extension on first use, registers fake kernels + autograd
from ._validation import check_levels, check_pool_mode, check_scalars, pair, to_rois

__all__ = ["multilevel_roi", "roi_align", "roi_pool", "roi_warp"]

KINDS = ("align", "warp", "pool")


def _one_map(input, rois, scale, kind, ph, pw, sampling_ratio, aligned, max_mode) -> Tensor:
    """The single-level ops are the one-map case of the schema pair (levels None: every RoI reads ``input``)."""
    _registration.ready(input)
    out, _ = torch.ops.roi_ops.multilevel_roi_forward(
        [input], rois, None, [scale], kind, ph, pw, sampling_ratio, aligned, max_mode
    )
    return out


def roi_align(
    input: Tensor,
    boxes: Tensor | list[Tensor],
    output_size: int | tuple[int, int],
    spatial_scale: float = 1.0,
    sampling_ratio: int = -1,
    aligned: bool = False,
    pool_mode: str = "avg",
    validate: bool = True,
) -> Tensor:
    """RoIAlign (Mask R-CNN). With ``pool_mode="avg"`` it equals ``torchvision.ops.roi_align``.

    Box corners are mapped with ``c * spatial_scale - (0.5 if aligned else 0)`` (never rounded); without
    ``aligned`` the RoI size is clamped to >= 1. Each of the ph x pw bins is sampled on a regular
    ``grid_h x grid_w`` grid (``sampling_ratio`` if > 0, else ``ceil(roi_size / pooled_size)``) with bilinear
    interpolation; a sample outside ``[-1, H] x [-1, W]`` has value 0.

    ``pool_mode="avg"`` averages the samples (dividing by ``max(grid_h * grid_w, 1)``); ``"max"`` takes their
    maximum (outside samples compete with value 0; the first maximum in raster order wins) and sends the
    gradient to the four bilinear neighbours of the winning sample.

    Args:
        input: Tensor[N, C, H, W].
        boxes: Tensor[K, 5] or list of Tensor[L, 4] (see module docstring).
        output_size: ``ph`` or ``(ph, pw)``.
        spatial_scale: feature-map size / image size (e.g. 1/16).
        sampling_ratio: samples per bin per axis; <= 0 for adaptive.
        aligned: shift the box by -0.5 pixel (pixel-centre alignment).
        pool_mode: ``"avg"`` or ``"max"``.
        validate: check the box values (finite, integer batch indices in range); see VALIDATE above.

    Returns:
        Tensor[K, C, ph, pw].
    """
    max_mode = check_pool_mode(pool_mode)
    ph, pw = pair(output_size)
    scale, sr = check_scalars(spatial_scale, sampling_ratio)
    rois = to_rois(input, boxes, "roi_align", validate)
    return _one_map(input, rois, scale, "align", ph, pw, sr, bool(aligned), max_mode)


def roi_pool(
    input: Tensor,
    boxes: Tensor | list[Tensor],
    output_size: int | tuple[int, int],
    spatial_scale: float = 1.0,
    validate: bool = True,
) -> Tensor:
    """RoIPool (Fast R-CNN); equals ``torchvision.ops.roi_pool``.

    Box corners are quantized with C ``round()`` (half away from zero) of ``c * spatial_scale``; the RoI is
    ``max(x2q - x1q + 1, 1)`` cells wide (same for the height). Bin ``i`` covers cells
    ``[floor(i * size / p), ceil((i + 1) * size / p))`` (offset by the RoI start, clipped to the map) and
    outputs their maximum; an empty bin outputs 0. The gradient goes to the (first) maximal cell.

    Args:
        input: Tensor[N, C, H, W].
        boxes: Tensor[K, 5] or list of Tensor[L, 4].
        output_size: ``ph`` or ``(ph, pw)``.
        spatial_scale: feature-map size / image size.
        validate: check the box values; see VALIDATE above.

    Returns:
        Tensor[K, C, ph, pw].
    """
    ph, pw = pair(output_size)
    scale, _ = check_scalars(spatial_scale)
    rois = to_rois(input, boxes, "roi_pool", validate)
    return _one_map(input, rois, scale, "pool", ph, pw, 0, False, True)


def roi_warp(
    input: Tensor,
    boxes: Tensor | list[Tensor],
    output_size: int | tuple[int, int],
    spatial_scale: float = 1.0,
    sampling_ratio: int = -1,
    pool_mode: str = "max",
    validate: bool = True,
) -> Tensor:
    """RoIWarp (the Mask R-CNN paper's ablation): RoIPool's quantization + RoIAlign's bilinear sampling.

    Exact definition. The RoI is quantized exactly as RoIPool does::

        x1q = round(x1 * spatial_scale), x2q = round(x2 * spatial_scale)   # C round(), half away from zero
        width = max(x2q - x1q + 1, 1)                                       # same for y / height

    and the quantized cells are treated as the continuous interval ``[x1q - 0.5, x1q - 0.5 + width]`` in
    pixel-centre coordinates, sampled with bilinear interpolation on a regular grid, i.e. the result is
    exactly ``roi_align(input, [x1q, y1q, x1q + width, y1q + height], output_size, spatial_scale=1,
    sampling_ratio, aligned=True, pool_mode)``. Samples per bin per axis:
    ``sampling_ratio`` if > 0, else ``ceil(width / pw)`` (``ceil(height / ph)``). Samples are aggregated by
    max (default) or avg, with the same rules as :func:`roi_align`.

    Args:
        input: Tensor[N, C, H, W].
        boxes: Tensor[K, 5] or list of Tensor[L, 4].
        output_size: ``ph`` or ``(ph, pw)``.
        spatial_scale: feature-map size / image size.
        sampling_ratio: samples per bin per axis; <= 0 for adaptive.
        pool_mode: ``"max"`` or ``"avg"``.
        validate: check the box values; see VALIDATE above.

    Returns:
        Tensor[K, C, ph, pw].
    """
    max_mode = check_pool_mode(pool_mode)
    ph, pw = pair(output_size)
    scale, sr = check_scalars(spatial_scale, sampling_ratio)
    rois = to_rois(input, boxes, "roi_warp", validate)
    return _one_map(input, rois, scale, "warp", ph, pw, sr, True, max_mode)


def multilevel_roi(
    features: Sequence[Tensor],
    rois: Tensor,
    levels: Tensor,
    output_size: int | tuple[int, int],
    spatial_scales: Sequence[float],
    kind: str = "align",
    sampling_ratio: int = -1,
    aligned: bool = False,
    pool_mode: str = "avg",
    validate: bool = True,
) -> Tensor:
    """RoIAlign, RoIWarp or RoIPool over a feature pyramid in one call: RoI k reads ``features[levels[k]]``.

    The result equals running the single-level op (:func:`roi_align`, :func:`roi_warp`, :func:`roi_pool`)
    on each level's RoIs with that level's ``spatial_scale`` and putting the rows back in RoI order, but
    without the grouping: no sort, no per-level gather/scatter, no host sync for the group sizes, and one
    kernel launch for all levels (forward and backward).

    Args:
        features: L maps Tensor[N, C, H_l, W_l] of one dtype and device (any H_l, W_l).
        rois: Tensor[K, 5] rows ``(batch_idx, x1, y1, x2, y2)`` in input-image coordinates.
        levels: Int64[K], the index into ``features`` of each RoI.
        output_size: ``ph`` or ``(ph, pw)``.
        spatial_scales: L floats, feature-map size / image size of each level (e.g. 1/4, 1/8, ...).
        kind: ``"align"``, ``"warp"`` or ``"pool"``.
        sampling_ratio, aligned, pool_mode: as in the single-level ops (pool uses none; warp ignores aligned).
        validate: check the RoI values and the levels; see VALIDATE above.

    Returns:
        Tensor[K, C, ph, pw], differentiable w.r.t. every feature map.
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    max_mode = kind == "pool" or check_pool_mode(pool_mode)
    ph, pw = pair(output_size)
    _, sr = check_scalars(1.0, sampling_ratio)
    features = list(features)
    scales = check_levels(features, rois, levels, spatial_scales, validate)
    rois = to_rois(features[0], rois, "multilevel_roi", validate)
    _registration.ready(features[0])
    out, _ = torch.ops.roi_ops.multilevel_roi_forward(
        features, rois, levels, scales, kind, ph, pw, sr, bool(aligned), max_mode
    )
    return out
