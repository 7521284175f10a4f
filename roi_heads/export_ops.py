"""ONNX stand-ins for the RoI extractor's op: what `python -m maskrcnn.export` puts in the op's place.

Exported with torch.onnx's tracer (dynamo=False, opset >= 16). Each stand-in computes in PyTorch what the op
it replaces computes, and traces to standard ONNX operators:

    align, avg (align, align_legacy, align_adaptive)  ONNX RoiAlign, mode=avg, coordinate_transformation_mode
                                                     half_pixel (aligned=True) or output_half_pixel
                                                     (aligned=False), sampling_ratio as ours (0 = adaptive,
                                                     ceil(roi_size / pooled_size) in both)
    align, max (align_max)                          our own subgraph (Gather, arithmetic, ReduceMax): ONNX
                                                     RoiAlign's max mode is not ours (see `roi_align_max`)
    pool                                            ONNX MaxRoiPool (Caffe's RoIPool, which ours matches)
    warp, warp_avg                                  refused: no ONNX operator quantizes a box and then samples it

Multi-level (FPN) extraction is one single-level call per level on that level's RoIs, scattered back into RoI
order (what torchvision's MultiScaleRoIAlign does under tracing; our fused multi-level op has no ONNX form).

roi_heads.TorchvisionRoIOp (roi=align-torchvision, ...) computes the same avg RoIAlign and RoIPool and exports
the same way. A user's extractor (roi_heads.contract: an op, or a torchvision-style pooler) exports only
through its own hook, EXPORT_HOOK, a method called once, with no arguments, at export time:

    op:     def onnx_export_op(self) -> Callable[[Tensor, Tensor, int, float], Tensor]
            a stand-in with the op's single-level call (feature [N, C, H, W], rois [R, 5] (image index, x1, y1,
            x2, y2) in image pixels, output_size S, spatial_scale) -> [R, C, S, S]; the exporter builds the
            multi-level merge around it (the op's own `multilevel` is not used)
    pooler: def onnx_export_op(self) -> Callable[[dict[str, Tensor], list[Tensor], list[tuple]], Tensor]
            a stand-in with the pooler's call (features {name: [N, C, H_l, W_l]}, boxes N x [R_i, 4],
            image_sizes) -> [R, C, S, S], used as it is

The stand-in computes what the extractor computes, from torch operations that torch.onnx.export (dynamo=False)
traces into standard ONNX: no Python numbers taken from tensor values (``.item()``, ``.tolist()``,
``len(tensor)``, ``int(tensor)``), which the tracer would freeze at their export-time values, and no custom
operator without an ONNX symbolic. The export command then checks the exported model against PyTorch, as for
the built-in ops.

Shapes: N images, C channels, R RoIs, S the pooled side, L pyramid levels.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn
from torch.nn import functional as F
from torch.onnx.operators import shape_as_tensor

import ops
from roi_heads.contract import PlainOp
from roi_heads.roi_op import RoIOp
from roi_heads.torchvision_op import TorchvisionRoIOp

EXPORT_HOOK = "onnx_export_op"


class ExportRefusedError(ValueError):
    """The model cannot be exported to ONNX as it is; the message says why and what to do."""


def export_op(op: object, name: str | None = None) -> ExportOp:
    """The export stand-in of an extractor's `op`; `name` (the `roi` config's name) for the messages.

    The op's own EXPORT_HOOK wins; otherwise our RoIOp and TorchvisionRoIOp are mapped by their kind, pool_mode,
    aligned and sampling_ratio; anything else is refused. An op that the model wrapped (roi_heads.contract's
    PlainOp, for a callable that is not a RoIFeatureOp) is looked at itself.
    """
    while isinstance(op, PlainOp):
        op = op.op
    hook = getattr(op, EXPORT_HOOK, None)
    if callable(hook):
        return ExportOp(_stand_in(op, hook, "(feature, rois, output_size, spatial_scale) -> [R, C, S, S]"))
    if isinstance(op, (RoIOp, TorchvisionRoIOp)) and not _overrides(op):
        return ExportOp(_builtin_stand_in(op, name or op.kind))
    raise ExportRefusedError(
        f"cannot export the RoI extractor {_qualname(op)}{f' (roi={name})' if name else ''} to ONNX: it is not "
        f"one of the built-in ops (roi_heads.RoIOp, TorchvisionRoIOp), and the exporter cannot know what it "
        f"computes. Give the class a method `{EXPORT_HOOK}(self)` that returns an ONNX-traceable callable "
        "(feature [N, C, H, W], rois [R, 5], output_size, spatial_scale) -> [R, C, S, S] computing the same thing "
        "(its contract is in roi_heads/export_ops.py and the README's 'Export to ONNX')."
    )


def export_pooler(pooler: object, name: str | None = None) -> ExportPooler:
    """The export stand-in of a torchvision-style pooler (a RoI heads' extractor that is not our RoIExtractor):
    only through its EXPORT_HOOK, else refused."""
    hook = getattr(pooler, EXPORT_HOOK, None)
    if callable(hook):
        return ExportPooler(_stand_in(pooler, hook, "(features, boxes, image_sizes) -> [R, C, S, S]"))
    raise ExportRefusedError(
        f"cannot export the RoI pooler {_qualname(pooler)}{f' (roi={name})' if name else ''} to ONNX: the "
        f"exporter cannot know what it computes or whether it traces. Give the class a method `{EXPORT_HOOK}(self)` "
        "that returns an ONNX-traceable callable (features {name: [N, C, H, W]}, boxes N x [R_i, 4], image_sizes) "
        "-> [R, C, S, S] computing the same thing (its contract is in roi_heads/export_ops.py and the README's "
        "'Export to ONNX')."
    )


def _stand_in(extractor: object, hook: Callable, call: str) -> Callable:
    stand_in = hook()
    if not callable(stand_in):
        raise ExportRefusedError(f"{_qualname(extractor)}.{EXPORT_HOOK}() returned {stand_in!r}, not a callable {call}")
    return stand_in


def _qualname(op: object) -> str:
    return f"{type(op).__module__}.{type(op).__qualname__}"


def _overrides(op: RoIOp | TorchvisionRoIOp) -> bool:
    """A subclass of our ops that computes something of its own (its forward or multilevel replaced)."""
    base = RoIOp if isinstance(op, RoIOp) else TorchvisionRoIOp
    return type(op).forward is not base.forward or type(op).multilevel is not base.multilevel


def _builtin_stand_in(op: RoIOp | TorchvisionRoIOp, name: str) -> nn.Module:
    sampling_ratio = int(op.sampling_ratio)
    pool_mode = getattr(op, "pool_mode", "avg")  # TorchvisionRoIOp: avg RoIAlign or RoIPool
    if op.kind == "warp":
        raise ExportRefusedError(
            f"roi={name} (RoIWarp) cannot be exported to ONNX: ONNX has no operator for it. RoIWarp rounds the "
            "box to the feature grid as RoIPool does, then samples it bilinearly; ONNX's RoiAlign samples without "
            "rounding and its MaxRoiPool does not sample. Export a model trained with roi=align, align_legacy, "
            "align_adaptive, align_max or pool, or run this one in PyTorch (python -m maskrcnn.predict)."
        )
    if op.kind == "pool":
        return MaxRoiPool()
    if pool_mode == "avg":
        return RoiAlignAvg(bool(op.aligned), sampling_ratio)
    if sampling_ratio <= 0:
        raise ExportRefusedError(
            f"roi={name} (RoIAlign, max over adaptive sampling, sampling_ratio={sampling_ratio}) cannot be exported "
            "to ONNX: ONNX RoiAlign's max mode differs from ours (see the README's 'Export to ONNX'), and our "
            "exported max formulation needs a fixed number of samples per bin (sampling_ratio > 0). Train with a "
            "fixed sampling_ratio (roi=align_max has 2), or run this model in PyTorch."
        )
    return RoiAlignMax(bool(op.aligned), sampling_ratio)


class ExportOp(nn.Module):
    """An op's export stand-in, with the extractor's two calls: single-level and multi-level."""

    def __init__(self, single: Callable[[Tensor, Tensor, int, float], Tensor]) -> None:
        super().__init__()
        self.single = single

    def forward(self, feature: Tensor, rois: Tensor, output_size: int, spatial_scale: float) -> Tensor:
        """feature [N, C, H, W], rois [R, 5] -> [R, C, S, S]."""
        return self.single(feature, rois, output_size, spatial_scale)

    def multilevel(
        self, features: list[Tensor], rois: Tensor, levels: Tensor, output_size: int, spatial_scales: list[float]
    ) -> Tensor:
        """features L x [N, C, H_l, W_l], rois [R, 5], levels Int64[R] in [0, L) -> [R, C, S, S].

        Each level pools its own RoIs; a scatter puts the rows back in RoI order (no host sync, no sizes
        frozen by the tracer).
        """
        merged = None
        for level, (feature, scale) in enumerate(zip(features, spatial_scales, strict=True)):
            index = torch.nonzero(levels == level).squeeze(1)
            pooled = self.single(feature, rois[index], output_size, scale)
            if merged is None:
                merged = pooled.new_zeros((rois.shape[0], pooled.shape[1], pooled.shape[2], pooled.shape[3]))
            rows = index.view(-1, 1, 1, 1).expand(pooled.shape)
            merged = merged.scatter(0, rows, pooled)
        assert merged is not None, "multilevel needs at least one feature map"
        return merged


def _one_map(feature, rois, output_size, spatial_scale, kind, sampling_ratio, aligned, max_mode) -> Tensor:
    """Our op on one map (what ops.roi_align / roi_pool run, without their argument checks, which the tracer
    would warn about while it records the stand-in's symbolic instead) -> [R, C, S, S]."""
    ops.load()  # torch.ops.roi_ops is there once the library is loaded (import ops loads nothing)
    out, _ = torch.ops.roi_ops.multilevel_roi_forward(
        [feature], rois, None, [spatial_scale], kind, output_size, output_size, sampling_ratio, aligned, max_mode
    )
    return out


class ExportPooler(nn.Module):
    """A pooler's export stand-in, as a module (the RoI heads hold their extractors as child modules)."""

    def __init__(self, pooler: Callable[[dict[str, Tensor], list[Tensor], list[tuple[int, int]]], Tensor]) -> None:
        super().__init__()
        self.pooler = pooler

    def forward(
        self, features: dict[str, Tensor], boxes: list[Tensor], image_sizes: list[tuple[int, int]] | None = None
    ) -> Tensor:
        return self.pooler(features, boxes, image_sizes)


class _RoiAlignAvgFunction(torch.autograd.Function):
    """ops.roi_align (avg) in PyTorch; ONNX RoiAlign in the exported graph."""

    @staticmethod
    def forward(ctx, feature, boxes, batch_index, output_size, spatial_scale, sampling_ratio, aligned):
        rois = torch.cat([batch_index[:, None].to(boxes.dtype), boxes], dim=1)
        return _one_map(feature, rois, output_size, spatial_scale, "align", sampling_ratio, aligned, False)

    @staticmethod
    def symbolic(g, feature, boxes, batch_index, output_size, spatial_scale, sampling_ratio, aligned):
        return g.op(
            "RoiAlign",
            feature,
            boxes,
            batch_index,
            coordinate_transformation_mode_s="half_pixel" if aligned else "output_half_pixel",
            mode_s="avg",
            output_height_i=output_size,
            output_width_i=output_size,
            sampling_ratio_i=max(sampling_ratio, 0),  # ours: <= 0 is adaptive; ONNX: 0 is
            spatial_scale_f=spatial_scale,
        )


class RoiAlignAvg(nn.Module):
    """Average RoIAlign; exports as ONNX RoiAlign (opset >= 16 for coordinate_transformation_mode)."""

    def __init__(self, aligned: bool, sampling_ratio: int) -> None:
        super().__init__()
        self.aligned, self.sampling_ratio = aligned, sampling_ratio

    def forward(self, feature: Tensor, rois: Tensor, output_size: int, spatial_scale: float) -> Tensor:
        """feature [N, C, H, W], rois [R, 5] -> [R, C, S, S]."""
        return _RoiAlignAvgFunction.apply(
            feature, rois[:, 1:], rois[:, 0].to(torch.int64), int(output_size), float(spatial_scale),
            self.sampling_ratio, self.aligned,
        )  # fmt: skip


class _MaxRoiPoolFunction(torch.autograd.Function):
    """ops.roi_pool in PyTorch; ONNX MaxRoiPool (rois [R, 5] with the batch index first) in the exported graph."""

    @staticmethod
    def forward(ctx, feature, rois, output_size, spatial_scale):
        return _one_map(feature, rois, output_size, spatial_scale, "pool", 0, False, True)

    @staticmethod
    def symbolic(g, feature, rois, output_size, spatial_scale):
        return g.op(
            "MaxRoiPool", feature, rois, pooled_shape_i=[output_size, output_size], spatial_scale_f=spatial_scale
        )


class MaxRoiPool(nn.Module):
    """RoIPool; exports as ONNX MaxRoiPool, Caffe's RoIPool: corners rounded half away from zero, bins
    floor/ceil, empty bins 0. onnxruntime's equals ours bit for bit (bench/onnx_roi_ops.py)."""

    def forward(self, feature: Tensor, rois: Tensor, output_size: int, spatial_scale: float) -> Tensor:
        return _MaxRoiPoolFunction.apply(feature, rois, int(output_size), float(spatial_scale))


class RoiAlignMax(nn.Module):
    """Max RoIAlign (ours) in plain tensor operations; see `roi_align_max`."""

    def __init__(self, aligned: bool, sampling_ratio: int) -> None:
        super().__init__()
        if sampling_ratio <= 0:
            raise ValueError(f"RoiAlignMax needs a fixed sampling_ratio > 0, got {sampling_ratio}")
        self.aligned, self.sampling_ratio = aligned, sampling_ratio

    def forward(self, feature: Tensor, rois: Tensor, output_size: int, spatial_scale: float) -> Tensor:
        return roi_align_max(feature, rois, int(output_size), float(spatial_scale), self.sampling_ratio, self.aligned)


def roi_align_max(
    feature: Tensor, rois: Tensor, output_size: int, spatial_scale: float, sampling_ratio: int, aligned: bool
) -> Tensor:
    """ops.roi_align(..., pool_mode="max") in tensor operations that trace to ONNX: [R, C, S, S].

    The maximum over each bin's g x g bilinear samples (g = sampling_ratio > 0): w1 v1 + w2 v2 + w3 v3 + w4 v4
    from `weighted_neighbours`, 0 for a sample outside the map, which competes too.

    ONNX RoiAlign's max mode is not this: onnxruntime takes, per bin, the maximum over the samples of the
    largest of the four weighted terms, max_i(w_i v_i), not of their sum (bench/onnx_roi_ops.py measures it).

    Memory: 4 gathers of [R, S*g, S*g, C] floats.
    """
    (t1, t2, t3, t4), outside = weighted_neighbours(feature, rois, output_size, spatial_scale, sampling_ratio, aligned)
    values = t1 + t2 + t3 + t4  # the kernel's operation order
    values = torch.where(outside, torch.zeros_like(values), values)
    return max_per_bin(values, sampling_ratio)


def max_per_bin(samples: Tensor, g: int) -> Tensor:
    """samples [R, S*g, S*g, C] (bin major) -> [R, C, S, S], the maximum of each bin's g x g samples.

    Strided slices, not a reshape to [R, S, g, S, g, C]: the exporter writes that reshape with a -1, which
    onnxruntime cannot resolve when R is 0 (a pyramid level without RoIs).
    """
    per_sample = [samples[:, i::g, j::g] for i in range(g) for j in range(g)]
    return torch.stack(per_sample).amax(dim=0).permute(0, 3, 1, 2)


def weighted_neighbours(
    feature: Tensor, rois: Tensor, output_size: int, spatial_scale: float, sampling_ratio: int, aligned: bool
) -> tuple[tuple[Tensor, Tensor, Tensor, Tensor], Tensor]:
    """The bilinear samples of our RoIAlign as their four weighted neighbour terms, ((w1 v1, w2 v2, w3 v3, w4 v4)
    each [R, S*g, S*g, C], outside Bool[R, S*g, S*g, 1]); samples in raster order (bin major, then sample).

    Sample positions and border rules are ours (DESIGN.md, "Op semantics"): start + p * bin + (i + 0.5) * bin / g;
    outside [-1, H] x [-1, W] a sample is `outside` (its terms are those of a clamped position and must be
    dropped); otherwise its coordinates are clamped at 0 and the low neighbour snaps to the last row/column. The
    neighbours are gathered from the map laid out [N * H * W, C].
    """
    c = feature.shape[1]
    h, w = shape_as_tensor(feature)[2:].unbind()  # Int64 0-d tensors, traced as the map's shape
    s, g = output_size, sampling_ratio
    offset = 0.5 if aligned else 0.0
    x1 = rois[:, 1] * spatial_scale - offset
    y1 = rois[:, 2] * spatial_scale - offset
    roi_w = rois[:, 3] * spatial_scale - offset - x1
    roi_h = rois[:, 4] * spatial_scale - offset - y1
    if not aligned:  # the original op forces malformed RoIs to 1 x 1
        roi_w, roi_h = roi_w.clamp(min=1.0), roi_h.clamp(min=1.0)
    bin_w, bin_h = roi_w / s, roi_h / s
    ys = _sample_positions(y1, bin_h, s, g)  # [R, S*g]
    xs = _sample_positions(x1, bin_w, s, g)
    y_low, y_high, ly, hy, y_out = _neighbours(ys, h)
    x_low, x_high, lx, hx, x_out = _neighbours(xs, w)

    flat = feature.permute(0, 2, 3, 1).reshape(-1, c)  # [N * H * W, C]
    base = rois[:, 0].to(torch.int64) * (h * w)  # [R]

    def term(wy: Tensor, wx: Tensor, y_index: Tensor, x_index: Tensor) -> Tensor:  # -> [R, S*g, S*g, C]
        index = base[:, None, None] + y_index[:, :, None] * w + x_index[:, None, :]
        # flat[index]; embedding exports as one ONNX Gather of the [R, S*g, S*g] index, with no reshape, which
        # the exporter would write with a -1 that onnxruntime cannot resolve for R = 0.
        values = F.embedding(index, flat)
        return (wy[:, :, None] * wx[:, None, :])[..., None] * values

    terms = (term(hy, hx, y_low, x_low), term(hy, lx, y_low, x_high), term(ly, hx, y_high, x_low),
             term(ly, lx, y_high, x_high))  # fmt: skip
    return terms, (y_out[:, :, None] | x_out[:, None, :])[..., None]


def _sample_positions(start: Tensor, bin_size: Tensor, s: int, g: int) -> Tensor:
    """start + p * bin + (i + 0.5) * bin / g for bins p < s and samples i < g, p major -> [R, s * g]."""
    bins = torch.arange(s, dtype=start.dtype, device=start.device).repeat_interleave(g)
    samples = (torch.arange(g, dtype=start.dtype, device=start.device) + 0.5).repeat(s)
    return start[:, None] + bins * bin_size[:, None] + samples * bin_size[:, None] / g


def _neighbours(coord: Tensor, size: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Positions along one axis of a map `size` (Int64 0-d) long -> (low, high) Int64 indices, (l, 1 - l)
    weights, outside."""
    size_f = size.to(coord.dtype)
    outside = (coord < -1.0) | (coord > size_f)
    coord = coord.clamp(min=0.0)
    low = coord.floor()
    last = size_f - 1
    snap = low >= last
    low = torch.where(snap, last.expand_as(low), low)
    high = torch.where(snap, low, low + 1)
    coord = torch.where(snap, low, coord)
    frac = coord - low
    # Out-of-map indices of outside samples are clamped so that the gather stays in bounds (their value is 0).
    return (low.clamp(min=0).to(torch.int64), high.clamp(min=0).to(torch.int64), frac, 1.0 - frac, outside)
