"""The RoI extractor contract: what the RoI heads call, and the two forms in which an extractor plugs in.

Shapes: N images, R RoIs (all images), C channels, L pyramid levels, S the output side (box 7, mask 14).

**An op** (the `roi` config's ``_target_`` builds it once; box and mask branches share it)::

    op(feature [N, C, H, W], rois [R, 5], output_size: int, spatial_scale: float) -> [R, C, S, S]
    op.multilevel(features L x [N, C, H_l, W_l], rois [R, 5], levels Int64[R] in [0, L), output_size: int,
                  spatial_scales: list[float]) -> [R, C, S, S]        (FPN models only; optional)

``rois`` rows are ``(image index, x1, y1, x2, y2)`` in input-image pixels; ``spatial_scale`` is the map's size
over the image's (1/stride). Subclass :class:`RoIFeatureOp` and implement ``forward``: ``multilevel`` then
defaults to one single-level call per level (as torchvision's MultiScaleRoIAlign groups them), and the model
maps RoIs to levels (FPN eq. 1) itself. Our fused op (roi_heads.RoIOp) overrides ``multilevel``. Any other
callable with the single-level signature works too: it is wrapped in :class:`PlainOp`.

**A pooler**, torchvision style (``torchvision.ops.MultiScaleRoIAlign`` is one): the config has
``_partial_: true`` and the model calls it once per branch, ``factory(featmap_names=[...], output_size=S)``,
then calls the result as::

    pooler(features {name: [N, C, H_l, W_l]}, boxes N x [R_i, 4], image_sizes N x (h, w)) -> [R, C, S, S]

It does its own level mapping. Our :class:`roi_heads.RoIExtractor` (an op plus the level mapping) is a pooler.

Every config key except ``name`` (and Hydra's ``_target_`` / ``_partial_``) goes to the constructor. The
model checks every extractor when it is built (:func:`check_pooler`), not at the first step.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol, runtime_checkable

import torch
from torch import Tensor, nn


@runtime_checkable
class SingleLevelOp(Protocol):
    """The single-level call of an op: feature [N, C, H, W], rois [R, 5] -> [R, C, S, S]."""

    def __call__(self, feature: Tensor, rois: Tensor, output_size: int, spatial_scale: float) -> Tensor: ...


@runtime_checkable
class RoIPooler(Protocol):
    """What the RoI heads call: features {name: [N, C, H_l, W_l]}, boxes N x [R_i, 4] -> [R, C, S, S]."""

    def __call__(
        self, features: dict[str, Tensor], boxes: list[Tensor], image_sizes: list[tuple[int, int]]
    ) -> Tensor: ...


class RoIFeatureOp(nn.Module):
    """Base class of an op: implement ``forward``; ``multilevel`` groups RoIs by level unless overridden."""

    def forward(self, feature: Tensor, rois: Tensor, output_size: int, spatial_scale: float) -> Tensor:
        """feature [N, C, H, W], rois [R, 5] (image index, x1, y1, x2, y2 in image px) -> [R, C, S, S]."""
        raise NotImplementedError(f"{type(self).__name__} must implement forward(feature, rois, output_size, "
                                  "spatial_scale)")

    def multilevel(
        self, features: list[Tensor], rois: Tensor, levels: Tensor, output_size: int, spatial_scales: list[float]
    ) -> Tensor:
        """features L x [N, C, H_l, W_l], rois [R, 5], levels Int64[R] in [0, L) -> [R, C, S, S]."""
        return pool_by_level(
            lambda feature, group, scale: self(feature, group, output_size, scale), features, rois, levels,
            spatial_scales,
        )


class PlainOp(RoIFeatureOp):
    """An op that is not a :class:`RoIFeatureOp` (a function, or a module without ``multilevel``), given the
    default ``multilevel``. A module is registered as a child, so its parameters train and are checkpointed."""

    def __init__(self, op: SingleLevelOp) -> None:
        super().__init__()
        self.op = op

    def forward(self, feature: Tensor, rois: Tensor, output_size: int, spatial_scale: float) -> Tensor:
        return self.op(feature, rois, output_size, spatial_scale)

    def multilevel(
        self, features: list[Tensor], rois: Tensor, levels: Tensor, output_size: int, spatial_scales: list[float]
    ) -> Tensor:
        own = getattr(self.op, "multilevel", None)
        if own is not None:
            return own(features, rois, levels, output_size, spatial_scales)
        return super().multilevel(features, rois, levels, output_size, spatial_scales)

    def extra_repr(self) -> str:
        return "" if isinstance(self.op, nn.Module) else f"op={getattr(self.op, '__qualname__', self.op)!r}"


def as_op(op: SingleLevelOp) -> RoIFeatureOp:
    """``op`` itself if it is a :class:`RoIFeatureOp`, else wrapped in :class:`PlainOp`."""
    return op if isinstance(op, RoIFeatureOp) else PlainOp(op)


def pool_by_level(
    pool: Callable[[Tensor, Tensor, float], Tensor],
    features: list[Tensor],
    rois: Tensor,
    levels: Tensor,
    spatial_scales: list[float],
) -> Tensor:
    """One single-level ``pool(feature, rois, scale)`` call per level, rows back in RoI order -> [R, C, S, S].

    One sort: one host sync (the group sizes) instead of one per level, and one gather back to the input
    order instead of a copy of the whole output per level.
    """
    order = torch.argsort(levels, stable=True)
    counts = torch.bincount(levels, minlength=len(features)).tolist()
    groups = rois[order].split(counts)
    pooled = [pool(f, group, scale) for f, group, scale in zip(features, groups, spatial_scales, strict=True)]
    return torch.cat(pooled)[torch.argsort(order)]


class ExtractorError(TypeError):
    """An extractor that breaks the contract; the message names its class, the call and the shapes."""


def _describe(t: object) -> str:
    if isinstance(t, Tensor):
        return f"Tensor[{', '.join(map(str, t.shape))}] {str(t.dtype).removeprefix('torch.')}"
    return type(t).__name__


def check_output(who: str, call: str, out: object, expected: tuple[int, ...], dtype: torch.dtype) -> None:
    """Raises ExtractorError unless ``out`` is a Tensor of shape ``expected`` and dtype ``dtype``."""
    if not isinstance(out, Tensor) or tuple(out.shape) != expected or out.dtype != dtype:
        wanted = f"Tensor[{', '.join(map(str, expected))}] {str(dtype).removeprefix('torch.')}"
        raise ExtractorError(f"{who}: {call} returned {_describe(out)}, expected {wanted}")


def run_checked(who: str, call: str, fn: Callable[[], object], expected: tuple[int, ...], dtype: torch.dtype) -> None:
    """Runs ``fn()`` (no gradients; the RNG state is restored after, so a check never changes a seeded run's
    initialisation) and checks its output; any exception becomes an ExtractorError naming the extractor and the
    call."""
    try:
        with torch.no_grad(), torch.random.fork_rng(devices=[]):
            out = fn()
    except ExtractorError:
        raise
    except Exception as e:
        raise ExtractorError(f"{who}: {call} raised {type(e).__name__}: {e}") from e
    check_output(who, call, out, expected, dtype)


def _dummy_inputs(featmap_names: list[str], strides: list[int], channels: int):
    """Two 64 x 96 px images' maps at the model's strides, and three boxes (two in image 0, one in image 1)."""
    g = torch.Generator().manual_seed(0)
    maps = {name: torch.rand(2, channels, max(64 // s, 1), max(96 // s, 1), generator=g)
            for name, s in zip(featmap_names, strides, strict=True)}  # fmt: skip
    boxes = [torch.tensor([[4.0, 6.0, 40.0, 30.0], [10.5, 2.25, 90.0, 60.0]]), torch.tensor([[0.0, 0.0, 8.0, 8.0]])]
    return maps, boxes, [(64, 96), (64, 96)]


def check_op(op: RoIFeatureOp, who: str, strides: list[int], channels: int, output_size: int) -> None:
    """The op's calls as a model with these strides makes them, once each on dummy inputs: the single-level call
    (always), and ``multilevel`` with every level (with more than one stride). Raises ExtractorError naming
    ``who``, the call, and the expected and actual output when a call fails or returns other than
    [3, C, S, S] float32."""
    maps, boxes, _ = _dummy_inputs([str(s) for s in strides], strides, channels)
    features = list(maps.values())
    rois = torch.cat([torch.cat([torch.full((len(b), 1), float(i)), b], dim=1) for i, b in enumerate(boxes)])
    expected = (len(rois), channels, output_size, output_size)
    call = (f"op({_describe(features[0])}, rois {_describe(rois)}, output_size={output_size}, "
            f"spatial_scale={1 / strides[0]:g})")
    run_checked(who, call, lambda: op(features[0], rois, output_size, 1 / strides[0]), expected, torch.float32)
    if len(features) > 1:
        levels = torch.arange(len(rois)) % len(features)
        scales = [1 / s for s in strides]
        call = (f"op.multilevel([{', '.join(_describe(f) for f in features)}], rois {_describe(rois)}, levels "
                f"{levels.tolist()}, output_size={output_size}, spatial_scales={[f'{s:g}' for s in scales]})")
        run_checked(who, call, lambda: op.multilevel(features, rois, levels, output_size, scales), expected,
                    torch.float32)


def check_pooler(
    pooler: RoIPooler, who: str, featmap_names: list[str], strides: list[int], channels: int, output_size: int
) -> None:
    """One call of a pooler as the RoI heads make it, on dummy maps and boxes; raises ExtractorError as
    :func:`check_op` does."""
    features, boxes, image_sizes = _dummy_inputs(featmap_names, strides, channels)
    shapes = ", ".join(f"{name!r}: {_describe(f)}" for name, f in features.items())
    call = f"pooler({{{shapes}}}, boxes [{len(boxes[0])}, 4] + [{len(boxes[1])}, 4], image_sizes={image_sizes})"
    run_checked(who, call, lambda: pooler(features, boxes, image_sizes), (3, channels, output_size, output_size),
                torch.float32)
