"""Our RoI op, the one behind every built-in `roi=` variant: RoIAlign (avg/max), RoIPool and RoIWarp from `ops`."""

from __future__ import annotations

from torch import Tensor

import ops
from roi_heads.contract import RoIFeatureOp

KINDS = ("align", "pool", "warp")
POOL_MODES = ("avg", "max")


class RoIOp(RoIFeatureOp):
    """Cuts a fixed-size feature map per RoI with RoIAlign, RoIPool or RoIWarp (the `ops` package).

    Args:
        kind: "align", "pool" or "warp".
        pool_mode: "avg" or "max" aggregation of the bilinear samples (align and warp only).
        aligned: half-pixel-corrected RoIAlign (align only; False is the paper's original op).
        sampling_ratio: bilinear samples per bin side; <= 0 means adaptive, ceil(bin size) per side (align and
            warp only).
    """

    def __init__(self, kind: str = "align", pool_mode: str = "avg", aligned: bool = True, sampling_ratio: int = 2):
        super().__init__()
        check_choice("kind", kind, KINDS)
        check_choice("pool_mode", pool_mode, POOL_MODES)
        self.kind, self.pool_mode, self.aligned, self.sampling_ratio = kind, pool_mode, aligned, sampling_ratio

    # Our rois come from our own proposals and boxes (valid batch indices by construction), so the ops' value
    # checks, a host sync per call on the GPU, are skipped (validate=False).
    def forward(self, feature: Tensor, rois: Tensor, output_size: int, spatial_scale: float) -> Tensor:
        """feature [N, C, H, W], rois [R, 5] (batch index, x1, y1, x2, y2) -> [R, C, S, S]."""
        size = (output_size, output_size)
        if self.kind == "pool":
            return ops.roi_pool(feature, rois, size, spatial_scale, validate=False)
        if self.kind == "warp":
            return ops.roi_warp(
                feature, rois, size, spatial_scale, self.sampling_ratio, self.pool_mode, validate=False
            )
        return ops.roi_align(
            feature, rois, size, spatial_scale, self.sampling_ratio, self.aligned, self.pool_mode, validate=False
        )

    def multilevel(
        self, features: list[Tensor], rois: Tensor, levels: Tensor, output_size: int, spatial_scales: list[float]
    ) -> Tensor:
        """features L x [N, C, H_l, W_l], rois [R, 5], levels Int64[R] in [0, L) -> [R, C, S, S].

        Reads every RoI from its own level in one call: no grouping and no host sync.
        """
        return ops.multilevel_roi(
            features, rois, levels, output_size, spatial_scales, self.kind, self.sampling_ratio, self.aligned,
            self.pool_mode, validate=False,
        )

    def extra_repr(self) -> str:
        if self.kind == "pool":
            return "kind=pool"
        aligned = f", aligned={self.aligned}" if self.kind == "align" else ""
        return f"kind={self.kind}, pool_mode={self.pool_mode}, sampling_ratio={self.sampling_ratio}{aligned}"


def check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"roi.{name}={value!r} is not one of {', '.join(choices)}")
