"""Argument checking and box conversion for the public RoI ops (clear Python errors, never a crash)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

POOL_MODES = ("avg", "max")


def pair(output_size, name: str = "output_size") -> tuple[int, int]:
    """``int`` or ``(h, w)`` -> ``(h, w)`` of positive ints."""
    if isinstance(output_size, (int, torch.SymInt)) and not isinstance(output_size, bool):
        size = (output_size, output_size)
    elif isinstance(output_size, Sequence) and not isinstance(output_size, str) and len(output_size) == 2:
        size = tuple(output_size)
    else:
        raise ValueError(f"{name} must be an int or a pair (h, w) of ints, got {output_size!r}")
    for s in size:
        if isinstance(s, bool) or not isinstance(s, (int, torch.SymInt)):
            raise ValueError(f"{name} must contain ints, got {output_size!r}")
        if not torch.compiler.is_compiling() and s <= 0:
            raise ValueError(f"{name} must be positive, got {output_size!r}")
    return size  # type: ignore[return-value]


def check_pool_mode(pool_mode) -> bool:
    """Returns True for "max"."""
    if pool_mode not in POOL_MODES:
        raise ValueError(f"pool_mode must be one of {POOL_MODES}, got {pool_mode!r}")
    return pool_mode == "max"


def check_scalars(spatial_scale, sampling_ratio=None) -> tuple[float, int | None]:
    if isinstance(spatial_scale, bool) or not isinstance(spatial_scale, (int, float)):
        raise ValueError(f"spatial_scale must be a number, got {spatial_scale!r}")
    if not math.isfinite(spatial_scale) or spatial_scale <= 0:
        raise ValueError(f"spatial_scale must be finite and > 0, got {spatial_scale!r}")
    if sampling_ratio is not None and (
        isinstance(sampling_ratio, bool) or not isinstance(sampling_ratio, int)
    ):
        raise ValueError(f"sampling_ratio must be an int (<= 0 means adaptive), got {sampling_ratio!r}")
    return float(spatial_scale), (None if sampling_ratio is None else int(sampling_ratio))


LOW_PRECISION = (torch.float16, torch.bfloat16)


def coord_dtype(dtype: torch.dtype) -> torch.dtype:
    """Dtype the box coordinates are used in for an input of ``dtype``.

    float32 for float16/bfloat16 input (bfloat16 rounds a corner near 1000 px to a multiple of 4 px, float16
    to a multiple of 0.5 px: exactly the misalignment RoIAlign removes); the input dtype otherwise.
    """
    return torch.float32 if dtype in LOW_PRECISION else dtype


def to_rois(input: Tensor, boxes, op: str, validate: bool = True) -> Tensor:
    """Checks ``input`` and converts ``boxes`` (Tensor[K, 5] or list of Tensor[L, 4]) to rois [K, 5].

    The rois come back in :func:`coord_dtype` of the input (boxes of any floating dtype are cast to it).
    """
    if not isinstance(input, Tensor):
        raise TypeError(f"{op}: input must be a Tensor, got {type(input).__name__}")
    if input.dim() != 4:
        raise ValueError(f"{op}: input must be 4-D [N, C, H, W], got shape {tuple(input.shape)}")
    if not input.is_floating_point():
        raise TypeError(f"{op}: input must be a floating point tensor, got {input.dtype}")

    if isinstance(boxes, Tensor):
        if boxes.dim() != 2 or boxes.shape[1] != 5:
            raise ValueError(
                f"{op}: boxes must be a Tensor[K, 5] (batch_idx, x1, y1, x2, y2) or a list of Tensor[L, 4], "
                f"got a tensor of shape {tuple(boxes.shape)}"
            )
        _check_box_tensor(input, boxes, op, "boxes")
        rois = boxes.to(coord_dtype(input.dtype))
    elif isinstance(boxes, (list, tuple)):
        if len(boxes) == 0:
            raise ValueError(f"{op}: boxes is an empty list; pass one Tensor[L, 4] per image")
        for i, b in enumerate(boxes):
            if not isinstance(b, Tensor) or b.dim() != 2 or b.shape[1] != 4:
                shape = tuple(b.shape) if isinstance(b, Tensor) else type(b).__name__
                raise ValueError(f"{op}: boxes[{i}] must be a Tensor[L, 4] (x1, y1, x2, y2), got {shape}")
            _check_box_tensor(input, b, op, f"boxes[{i}]")
        dtype = coord_dtype(input.dtype)
        idx = torch.cat(
            [torch.full((b.shape[0], 1), i, dtype=dtype, device=b.device) for i, b in enumerate(boxes)]
        )
        rois = torch.cat([idx, torch.cat([b.to(dtype) for b in boxes])], dim=1)
    else:
        raise TypeError(
            f"{op}: boxes must be a Tensor[K, 5] or a list of Tensor[L, 4], got {type(boxes).__name__}"
        )

    if validate and not torch.compiler.is_compiling():
        _check_values(rois, input.shape[0], op)
    return rois


def check_levels(features: list[Tensor], rois, levels, spatial_scales, validate: bool) -> list[float]:
    """Checks a pyramid (same dtype, device, N and C on every level) and the per-RoI levels.

    Returns the spatial scales as floats. With ``validate`` the level values are checked too (a host sync on
    the GPU).
    """
    op = "multilevel_roi"
    if not features:
        raise ValueError(f"{op}: features is empty; pass one Tensor[N, C, H, W] per pyramid level")
    scales = list(spatial_scales)
    if len(scales) != len(features):
        raise ValueError(f"{op}: got {len(features)} feature maps but {len(scales)} spatial_scales")
    first = features[0]
    for i, f in enumerate(features):
        if not isinstance(f, Tensor) or f.dim() != 4:
            shape = tuple(f.shape) if isinstance(f, Tensor) else type(f).__name__
            raise ValueError(f"{op}: features[{i}] must be a Tensor[N, C, H, W], got {shape}")
        if (f.dtype, f.device, f.shape[:2]) != (first.dtype, first.device, first.shape[:2]):
            raise ValueError(
                f"{op}: features[{i}] is {f.dtype} {tuple(f.shape)} on {f.device} but features[0] is "
                f"{first.dtype} {tuple(first.shape)} on {first.device}; all levels need the same dtype, "
                "device, N and C"
            )
    scales = [check_scalars(s)[0] for s in scales]
    if not isinstance(levels, Tensor) or levels.dtype != torch.int64 or levels.dim() != 1:
        what = f"{levels.dtype} {tuple(levels.shape)}" if isinstance(levels, Tensor) else type(levels).__name__
        raise ValueError(f"{op}: levels must be an int64 Tensor[K], got {what}")
    if not isinstance(rois, Tensor) or levels.shape[0] != rois.shape[0]:
        raise ValueError(f"{op}: levels has {levels.shape[0]} entries but rois is not a Tensor[{levels.shape[0]}, 5]")
    if levels.device != first.device:
        raise ValueError(f"{op}: device mismatch: levels is on {levels.device} but features on {first.device}")
    if validate and not torch.compiler.is_compiling() and levels.numel() > 0:
        bad = (levels < 0) | (levels >= len(features))
        if bool(bad.any()):
            row = int(bad.nonzero()[0, 0])
            raise ValueError(
                f"{op}: level {int(levels[row])} of RoI row {row} is outside [0, {len(features)})"
            )
    return scales


def _check_box_tensor(input: Tensor, b: Tensor, op: str, name: str) -> None:
    if b.device != input.device:
        raise ValueError(f"{op}: device mismatch: {name} is on {b.device} but input is on {input.device}")
    if not b.is_floating_point():
        raise TypeError(
            f"{op}: {name} must be a floating point tensor, got dtype {b.dtype}; "
            f"convert with .to({coord_dtype(input.dtype)})"
        )


def _check_values(rois: Tensor, batch_size: int, op: str) -> None:
    """Data-dependent checks (skipped while compiling): finite coordinates, valid integer batch indices."""
    if rois.shape[0] == 0:
        return
    r = rois.detach()
    bad = ~torch.isfinite(r).all(dim=1)
    if bool(bad.any()):
        row = int(bad.nonzero()[0, 0])
        raise ValueError(f"{op}: RoI row {row} has a non-finite value: {r[row].tolist()}")
    b = r[:, 0]
    bad = (b != torch.round(b)) | (b < 0) | (b >= batch_size)
    if bool(bad.any()):
        row = int(bad.nonzero()[0, 0])
        raise ValueError(
            f"{op}: RoI row {row} has batch index {r[row, 0].item()!r}; "
            f"it must be an integer in [0, {batch_size})"
        )
