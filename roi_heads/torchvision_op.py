"""torchvision's RoIAlign and RoIPool (`torchvision.ops`) behind our op contract, for parity checks.

The `roi=align-torchvision`, `roi=align_legacy-torchvision` and `roi=pool-torchvision` variants select it by
`_target_`, as a user's own extractor would be: the plug-in path runs inside the repo.
"""

from __future__ import annotations

import torchvision
from torch import Tensor

from roi_heads.contract import RoIFeatureOp
from roi_heads.roi_op import KINDS, POOL_MODES, check_choice


class TorchvisionRoIOp(RoIFeatureOp):
    """torchvision.ops.roi_align (avg) or roi_pool, with the arguments of our RoIOp.

    It has no multi-level op: FPN models group the RoIs by level (the contract's default `multilevel`), as
    torchvision's MultiScaleRoIAlign does.
    """

    def __init__(self, kind: str = "align", pool_mode: str = "avg", aligned: bool = True, sampling_ratio: int = 2):
        super().__init__()
        check_choice("kind", kind, KINDS)
        check_choice("pool_mode", pool_mode, POOL_MODES)
        if kind == "warp" or (kind == "align" and pool_mode == "max"):
            raise ValueError(
                f"torchvision.ops has no counterpart for kind={kind!r} pool_mode={pool_mode!r}: it only has avg "
                "RoIAlign and RoIPool. Use our op (_target_: roi_heads.RoIOp)."
            )
        self.kind, self.aligned, self.sampling_ratio = kind, aligned, sampling_ratio

    def forward(self, feature: Tensor, rois: Tensor, output_size: int, spatial_scale: float) -> Tensor:
        """feature [N, C, H, W], rois [R, 5] -> [R, C, S, S]."""
        size = (output_size, output_size)
        if self.kind == "pool":
            return torchvision.ops.roi_pool(feature, rois, size, spatial_scale)
        return torchvision.ops.roi_align(feature, rois, size, spatial_scale, self.sampling_ratio, self.aligned)

    def extra_repr(self) -> str:
        if self.kind == "pool":
            return "kind=pool"
        return f"kind=align, sampling_ratio={self.sampling_ratio}, aligned={self.aligned}"
