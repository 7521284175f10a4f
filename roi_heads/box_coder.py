"""Box encoding and decoding that keep the geometry in float32 under mixed precision."""

from __future__ import annotations

import torch
from torch import Tensor
from torchvision.models.detection._utils import BoxCoder


def geometry_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype box coordinates are computed in: float32 for float16/bfloat16, else the dtype itself."""
    return torch.promote_types(dtype, torch.float32)


def to_geometry_dtype(t: Tensor) -> Tensor:
    return t.to(geometry_dtype(t.dtype))


class Float32BoxCoder(BoxCoder):
    """torchvision's BoxCoder, computing in float32 (or float64) whatever dtype the deltas come in.

    Under autocast the heads emit bfloat16 deltas and torchvision's decode casts the reference boxes to the
    deltas' dtype: every coordinate above 512 px would land on a 4 px grid, above 1024 px on an 8 px grid.
    That quantizes proposals, training RoIs and detections as RoIPool does, the very error RoIAlign removes.
    (detectron2 decodes in float32 for the same reason.) Float32 and float64 inputs are unchanged.
    """

    def decode_single(self, rel_codes: Tensor, boxes: Tensor) -> Tensor:
        """rel_codes [R, 4k] deltas, boxes [R, 4] xyxy -> [R, 4k] boxes in float32 (or float64)."""
        dtype = torch.promote_types(geometry_dtype(rel_codes.dtype), geometry_dtype(boxes.dtype))
        return super().decode_single(rel_codes.to(dtype), boxes.to(dtype))

    def encode_single(self, reference_boxes: Tensor, proposals: Tensor) -> Tensor:
        """reference_boxes [R, 4] (the targets), proposals [R, 4] -> [R, 4] deltas in float32 (or float64)."""
        dtype = torch.promote_types(geometry_dtype(reference_boxes.dtype), geometry_dtype(proposals.dtype))
        return super().encode_single(reference_boxes.to(dtype), proposals.to(dtype))
