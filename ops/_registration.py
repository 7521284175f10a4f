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


torch.library.register_autograd("roi_ops::roi_align_forward", _align_backward, setup_context=_setup_context)
torch.library.register_autograd("roi_ops::roi_warp_forward", _warp_backward, setup_context=_setup_context)
torch.library.register_autograd("roi_ops::roi_pool_forward", _pool_backward, setup_context=_setup_context)
