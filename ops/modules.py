"""nn.Module wrappers around the functional RoI ops (see :mod:`ops.functional` for the semantics)."""

from __future__ import annotations

from torch import Tensor, nn

from ._validation import check_pool_mode, check_scalars, pair
from .functional import roi_align, roi_pool, roi_warp

__all__ = ["RoIAlign", "RoIPool", "RoIWarp"]


class RoIAlign(nn.Module):
    """RoIAlign: ``forward(input [N, C, H, W], boxes [K, 5] | list of [L, 4]) -> [K, C, ph, pw]``."""

    def __init__(
        self,
        output_size,
        spatial_scale: float = 1.0,
        sampling_ratio: int = -1,
        aligned: bool = False,
        pool_mode: str = "avg",
    ):
        super().__init__()
        check_pool_mode(pool_mode)
        self.output_size = pair(output_size)
        self.spatial_scale, self.sampling_ratio = check_scalars(spatial_scale, sampling_ratio)
        self.aligned = bool(aligned)
        self.pool_mode = pool_mode

    def forward(self, input: Tensor, boxes) -> Tensor:
        return roi_align(
            input,
            boxes,
            self.output_size,
            self.spatial_scale,
            self.sampling_ratio,
            self.aligned,
            self.pool_mode,
        )

    def extra_repr(self) -> str:
        return (
            f"output_size={self.output_size}, spatial_scale={self.spatial_scale}, "
            f"sampling_ratio={self.sampling_ratio}, aligned={self.aligned}, pool_mode={self.pool_mode!r}"
        )


class RoIPool(nn.Module):
    """RoIPool: ``forward(input [N, C, H, W], boxes [K, 5] | list of [L, 4]) -> [K, C, ph, pw]``."""

    def __init__(self, output_size, spatial_scale: float = 1.0):
        super().__init__()
        self.output_size = pair(output_size)
        self.spatial_scale, _ = check_scalars(spatial_scale)

    def forward(self, input: Tensor, boxes) -> Tensor:
        return roi_pool(input, boxes, self.output_size, self.spatial_scale)

    def extra_repr(self) -> str:
        return f"output_size={self.output_size}, spatial_scale={self.spatial_scale}"


class RoIWarp(nn.Module):
    """RoIWarp (quantized RoI + bilinear sampling): ``forward(input, boxes) -> [K, C, ph, pw]``."""

    def __init__(
        self, output_size, spatial_scale: float = 1.0, sampling_ratio: int = -1, pool_mode: str = "max"
    ):
        super().__init__()
        check_pool_mode(pool_mode)
        self.output_size = pair(output_size)
        self.spatial_scale, self.sampling_ratio = check_scalars(spatial_scale, sampling_ratio)
        self.pool_mode = pool_mode

    def forward(self, input: Tensor, boxes) -> Tensor:
        return roi_warp(
            input, boxes, self.output_size, self.spatial_scale, self.sampling_ratio, self.pool_mode
        )

    def extra_repr(self) -> str:
        return (
            f"output_size={self.output_size}, spatial_scale={self.spatial_scale}, "
            f"sampling_ratio={self.sampling_ratio}, pool_mode={self.pool_mode!r}"
        )
