"""RoI feature extraction from one feature map (C4/C5) or an FPN pyramid, with any op of the contract."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from roi_heads.contract import RoIFeatureOp


def level_of_boxes(
    boxes: Tensor, min_level: int, max_level: int, canonical_scale: float = 224.0, canonical_level: int = 4
) -> Tensor:
    """FPN paper, eq. 1: level = floor(k0 + log2(sqrt(wh) / 224)), clamped to the available levels.

    boxes [R, 4] (x1, y1, x2, y2) in image pixels -> Int64[R] pyramid levels.
    """
    areas = (boxes[:, 2] - boxes[:, 0]).clamp(min=0) * (boxes[:, 3] - boxes[:, 1]).clamp(min=0)
    # eps keeps boxes of exactly canonical size on the canonical level despite float rounding.
    levels = torch.floor(canonical_level + torch.log2(areas.sqrt() / canonical_scale + 1e-8) + 1e-6)
    # nan_to_num: a NaN box (a diverging step, before train.nonfinite catches it) must not index out of range.
    return levels.nan_to_num(nan=min_level).clamp(min=min_level, max=max_level).to(torch.int64)


class RoIExtractor(nn.Module):
    """Pools a [C, S, S] feature per box with `op`, from the pyramid level the box belongs to: a pooler of the
    contract (roi_heads.contract), built around an op.

    Args:
        op: the RoI op (roi_heads.contract.RoIFeatureOp: ours, torchvision's, or a user's).
        featmap_names: keys of the backbone's feature dict to pool from, finest first.
        strides: the stride of each of those maps w.r.t. the input image (powers of two).
        output_size: S, the side of the pooled feature.
        canonical_scale, canonical_level: the FPN level mapping's k0 and 224.
    """

    def __init__(
        self,
        op: RoIFeatureOp,
        featmap_names: Sequence[str],
        strides: Sequence[int],
        output_size: int,
        canonical_scale: float = 224.0,
        canonical_level: int = 4,
    ) -> None:
        super().__init__()
        if len(featmap_names) != len(strides) or not featmap_names:
            raise ValueError(f"need one stride per feature map, got {list(featmap_names)} and {list(strides)}")
        levels = [math.log2(s) for s in strides]
        if any(lvl != int(lvl) for lvl in levels) or levels != sorted(levels):
            raise ValueError(f"strides must be increasing powers of two, got {list(strides)}")
        self.op = op
        self.featmap_names = list(featmap_names)
        self.strides = list(strides)
        self.output_size = output_size
        self.canonical_scale, self.canonical_level = canonical_scale, canonical_level
        self.min_level, self.max_level = int(levels[0]), int(levels[-1])

    def forward(
        self, features: dict[str, Tensor], boxes: list[Tensor], image_sizes: list[tuple[int, int]] | None = None
    ) -> Tensor:
        """features {name: [N, C, H_l, W_l]}, boxes: N x [L_i, 4] image coords -> [R, C, S, S].

        image_sizes (the contract's third argument) is not needed: the strides are known.
        """
        rois = boxes_to_rois(boxes)
        maps = [features[name] for name in self.featmap_names]
        if len(maps) == 1:
            return self.op(maps[0], rois, self.output_size, 1.0 / self.strides[0])

        levels = level_of_boxes(rois[:, 1:], self.min_level, self.max_level, self.canonical_scale, self.canonical_level)
        scales = [1.0 / stride for stride in self.strides]
        return self.op.multilevel(maps, rois, levels - self.min_level, self.output_size, scales)

    def extra_repr(self) -> str:
        return f"featmaps={self.featmap_names}, strides={self.strides}, output_size={self.output_size}"


def boxes_to_rois(boxes: list[Tensor]) -> Tensor:
    """list of N Tensor[L_i, 4] -> Tensor[R, 5] with the image index in column 0."""
    if not boxes:
        raise ValueError("boxes_to_rois needs at least one image's boxes")
    index = torch.cat([torch.full_like(b[:, :1], i) for i, b in enumerate(boxes)])
    return torch.cat([index, torch.cat(boxes)], dim=1)
