"""Loads the ``roi_ops`` extension and registers its fake (meta) kernels and autograd formulas.

The schemas and the CPU/CUDA kernels live in C++ (``torch.ops.roi_ops.*``); everything that only needs
shapes (fake kernels for ``torch.compile`` / ``opcheck``) and the backward wiring lives here.
"""

from __future__ import annotations

import torch

from . import _extension
from ._validation import coord_dtype

_extension.load()

_ops = torch.ops.roi_ops


# ---------------------------------------------------------------------------------------------------
# Fake kernels: output [K, C, ph, pw] in the input dtype, argmax int32 ([0] for the avg modes).
# rois come in the input dtype or in its coordinate dtype (float32 for float16/bfloat16), like the kernels.
def _check_rois_dtype(x, rois, what):
    torch._check(
        rois.dtype in (x.dtype, coord_dtype(x.dtype)),
        lambda: f"rois must have the dtype of {what} ({x.dtype}) or {coord_dtype(x.dtype)}, got {rois.dtype}",
    )


def _fake_forward(input, rois, pooled_height, pooled_width, has_argmax: bool):
    torch._check(input.dim() == 4, lambda: f"input must be [N, C, H, W], got {tuple(input.shape)}")
    torch._check(
        rois.dim() == 2 and rois.shape[1] == 5, lambda: f"rois must be [K, 5], got {tuple(rois.shape)}"
    )
    _check_rois_dtype(input, rois, "input")
    shape = (rois.shape[0], input.shape[1], pooled_height, pooled_width)
    out = input.new_empty(shape)
    argmax = input.new_empty(shape if has_argmax else (0,), dtype=torch.int32)
    return out, argmax


@torch.library.register_fake("roi_ops::roi_align_forward")
def _(input, rois, spatial_scale, pooled_height, pooled_width, sampling_ratio, aligned, max_mode):
    return _fake_forward(input, rois, pooled_height, pooled_width, max_mode)


@torch.library.register_fake("roi_ops::roi_warp_forward")
def _(input, rois, spatial_scale, pooled_height, pooled_width, sampling_ratio, max_mode):
    return _fake_forward(input, rois, pooled_height, pooled_width, max_mode)


@torch.library.register_fake("roi_ops::roi_pool_forward")
def _(input, rois, spatial_scale, pooled_height, pooled_width):
    return _fake_forward(input, rois, pooled_height, pooled_width, True)


def _fake_backward(grad, rois, batch_size, channels, height, width):
    _check_rois_dtype(grad, rois, "grad")
    return grad.new_empty((batch_size, channels, height, width))


@torch.library.register_fake("roi_ops::roi_align_backward")
def _(
    grad,
    rois,
    argmax,
    spatial_scale,
    pooled_height,
    pooled_width,
    batch_size,
    channels,
    height,
    width,
    sampling_ratio,
    aligned,
    max_mode,
):
    return _fake_backward(grad, rois, batch_size, channels, height, width)


@torch.library.register_fake("roi_ops::roi_warp_backward")
def _(
    grad,
    rois,
    argmax,
    spatial_scale,
    pooled_height,
    pooled_width,
    batch_size,
    channels,
    height,
    width,
    sampling_ratio,
    max_mode,
):
    return _fake_backward(grad, rois, batch_size, channels, height, width)


@torch.library.register_fake("roi_ops::roi_pool_backward")
def _(grad, rois, argmax, spatial_scale, pooled_height, pooled_width, batch_size, channels, height, width):
    return _fake_backward(grad, rois, batch_size, channels, height, width)


@torch.library.register_fake("roi_ops::multilevel_roi_forward")
def _(inputs, rois, levels, spatial_scales, kind, pooled_height, pooled_width, sampling_ratio, aligned, max_mode):
    torch._check(len(inputs) > 0, lambda: "multilevel_roi_forward needs at least one feature map")
    torch._check(levels.dim() == 1 and levels.shape[0] == rois.shape[0], lambda: "levels must be [K]")
    return _fake_forward(inputs[0], rois, pooled_height, pooled_width, kind == "pool" or max_mode)


@torch.library.register_fake("roi_ops::multilevel_roi_backward")
def _(
    grad,
    rois,
    levels,
    argmax,
    spatial_scales,
    kind,
    pooled_height,
    pooled_width,
    batch_size,
    channels,
    heights,
    widths,
    sampling_ratio,
    aligned,
    max_mode,
):
    return [
        _fake_backward(grad, rois, batch_size, channels, h, w) for h, w in zip(heights, widths, strict=True)
    ]


# ---------------------------------------------------------------------------------------------------
# Autograd: the forward ops are differentiable w.r.t. `input` only (not the boxes).
def _setup_context(ctx, inputs, output):
    input, rois = inputs[0], inputs[1]
    ctx.params = inputs[2:]
    ctx.input_shape = tuple(input.shape)
    ctx.save_for_backward(rois, output[1])


def _align_backward(ctx, grad_out, grad_argmax):
    rois, argmax = ctx.saved_tensors
    spatial_scale, ph, pw, sampling_ratio, aligned, max_mode = ctx.params
    grad_input = _ops.roi_align_backward(
        grad_out, rois, argmax, spatial_scale, ph, pw, *ctx.input_shape, sampling_ratio, aligned, max_mode
    )
    return grad_input, None, None, None, None, None, None, None


def _warp_backward(ctx, grad_out, grad_argmax):
    rois, argmax = ctx.saved_tensors
    spatial_scale, ph, pw, sampling_ratio, max_mode = ctx.params
    grad_input = _ops.roi_warp_backward(
        grad_out, rois, argmax, spatial_scale, ph, pw, *ctx.input_shape, sampling_ratio, max_mode
    )
    return grad_input, None, None, None, None, None, None


def _pool_backward(ctx, grad_out, grad_argmax):
    rois, argmax = ctx.saved_tensors
    spatial_scale, ph, pw = ctx.params
    grad_input = _ops.roi_pool_backward(grad_out, rois, argmax, spatial_scale, ph, pw, *ctx.input_shape)
    return grad_input, None, None, None, None


def _multilevel_setup_context(ctx, inputs, output):
    features, rois, levels = inputs[:3]
    ctx.params = inputs[3:]
    heights, widths = [f.shape[2] for f in features], [f.shape[3] for f in features]
    ctx.shapes = (features[0].shape[0], features[0].shape[1], heights, widths)
    ctx.save_for_backward(rois, levels, output[1])


def _multilevel_backward(ctx, grad_out, grad_argmax):
    rois, levels, argmax = ctx.saved_tensors
    spatial_scales, kind, ph, pw, sampling_ratio, aligned, max_mode = ctx.params
    batch_size, channels, heights, widths = ctx.shapes
    grads = _ops.multilevel_roi_backward(
        grad_out, rois, levels, argmax, spatial_scales, kind, ph, pw, batch_size, channels, heights, widths,
        sampling_ratio, aligned, max_mode,
    )
    return grads, None, None, None, None, None, None, None, None, None


torch.library.register_autograd(
    "roi_ops::multilevel_roi_forward", _multilevel_backward, setup_context=_multilevel_setup_context
)
torch.library.register_autograd("roi_ops::roi_align_forward", _align_backward, setup_context=_setup_context)
torch.library.register_autograd("roi_ops::roi_warp_forward", _warp_backward, setup_context=_setup_context)
torch.library.register_autograd("roi_ops::roi_pool_forward", _pool_backward, setup_context=_setup_context)
