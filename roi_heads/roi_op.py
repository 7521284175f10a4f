"""The switchable RoI operator: one object that the `roi` config group describes."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torchvision
from torch import Tensor, nn

import ops

KINDS = ("align", "pool", "warp")
POOL_MODES = ("avg", "max")
IMPLS = ("ours", "torchvision")


class RoIOp(nn.Module):
    """Cuts a fixed-size feature map per RoI with RoIAlign, RoIPool or RoIWarp.

    Args:
        kind: "align", "pool" or "warp".
        pool_mode: "avg" or "max" aggregation of the bilinear samples (align and warp only).
        aligned: half-pixel-corrected RoIAlign (align only; False is the paper's original op).
        sampling_ratio: bilinear samples per bin side; <= 0 means adaptive (align and warp only).
        impl: "ours" (the `ops` package) or "torchvision" (torchvision.ops, where it has the op), for
            end-to-end parity checks.
        name: the variant's name (the `roi=` option a config instantiates this from), shown in the repr.
    """

    def __init__(
        self,
        kind: str = "align",
        pool_mode: str = "avg",
        aligned: bool = True,
        sampling_ratio: int = 2,
        impl: str = "ours",
        name: str | None = None,
    ) -> None:
        super().__init__()
        _check_choice("roi.kind", kind, KINDS)
        _check_choice("roi.pool_mode", pool_mode, POOL_MODES)
        _check_choice("roi.impl", impl, IMPLS)
        if impl == "torchvision" and (kind == "warp" or (kind == "align" and pool_mode == "max")):
            raise ValueError(
                f"roi.impl=torchvision has no counterpart for kind={kind!r} pool_mode={pool_mode!r}: "
                "torchvision.ops only has avg RoIAlign and RoIPool. Use roi.impl=ours."
            )
        self.kind, self.pool_mode, self.aligned = kind, pool_mode, aligned
        self.sampling_ratio, self.impl, self.name = sampling_ratio, impl, name

    # Our rois come from our own proposals and boxes (valid batch indices by construction), so the ops'
    # value checks, a host sync per call on the GPU, are skipped (validate=False).
    def forward(self, features: Tensor, rois: Tensor, output_size: int, spatial_scale: float) -> Tensor:
        """features [N, C, H, W], rois [R, 5] (batch index, x1, y1, x2, y2) -> [R, C, ph, pw]."""
        size = (output_size, output_size)
        if self.kind == "pool":
            if self.impl == "torchvision":
                return torchvision.ops.roi_pool(features, rois, size, spatial_scale)
            return ops.roi_pool(features, rois, size, spatial_scale, validate=False)
        if self.kind == "warp":
            return ops.roi_warp(
                features, rois, size, spatial_scale, self.sampling_ratio, self.pool_mode, validate=False
            )
        if self.impl == "torchvision":
            return torchvision.ops.roi_align(features, rois, size, spatial_scale, self.sampling_ratio, self.aligned)
        return ops.roi_align(
            features, rois, size, spatial_scale, self.sampling_ratio, self.aligned, self.pool_mode, validate=False
        )

    def multilevel(
        self, features: list[Tensor], rois: Tensor, levels: Tensor, output_size: int, spatial_scales: list[float]
    ) -> Tensor:
        """features L x [N, C, H_l, W_l], rois [R, 5], levels Int64[R] in [0, L) -> [R, C, ph, pw].

        Our op reads every RoI from its own level in one call: no grouping and no host sync. torchvision has
        no such op, so impl=torchvision groups the RoIs by level, as its MultiScaleRoIAlign does.
        """
        if self.impl == "ours":
            return ops.multilevel_roi(
                features,
                rois,
                levels,
                output_size,
                spatial_scales,
                self.kind,
                self.sampling_ratio,
                self.aligned,
                self.pool_mode,
                validate=False,
            )
        return pool_by_level(
            lambda feature, group, scale: self(feature, group, output_size, scale),
            features,
            rois,
            levels,
            spatial_scales,
        )

    def extra_repr(self) -> str:
        extra = (
            ""
            if self.kind == "pool"
            else f", pool_mode={self.pool_mode}, sampling_ratio={self.sampling_ratio}"
        )
        if self.kind == "align":
            extra += f", aligned={self.aligned}"
        name = f"name={self.name}, " if self.name else ""
        return f"{name}kind={self.kind}{extra}, impl={self.impl}"


def _check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"{name}={value!r} is not one of {', '.join(choices)}")


def pool_by_level(
    pool: Callable[[Tensor, Tensor, float], Tensor],
    features: list[Tensor],
    rois: Tensor,
    levels: Tensor,
    spatial_scales: list[float],
) -> Tensor:
    """One single-level ``pool(feature, rois, scale)`` call per level, rows back in RoI order -> [R, C, ph, pw].

    One sort: one host sync (the group sizes) instead of one per level, and one gather back to the input
    order instead of a copy of the whole output per level.
    """
    order = torch.argsort(levels, stable=True)
    counts = torch.bincount(levels, minlength=len(features)).tolist()
    groups = rois[order].split(counts)
    pooled = [pool(f, group, scale) for f, group, scale in zip(features, groups, spatial_scales, strict=True)]
    return torch.cat(pooled)[torch.argsort(order)]


def boxes_to_rois(boxes: list[Tensor]) -> Tensor:
    """list of N Tensor[L_i, 4] -> Tensor[R, 5] with the image index in column 0."""
    if not boxes:
        raise ValueError("boxes_to_rois needs at least one image's boxes")
    index = torch.cat([torch.full_like(b[:, :1], i) for i, b in enumerate(boxes)])
    return torch.cat([index, torch.cat(boxes)], dim=1)
