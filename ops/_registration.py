"""Loads the ``roi_ops`` extension on first use and registers the fake (meta) kernels and the autograd formula
of its one schema pair, ``multilevel_roi_forward`` / ``multilevel_roi_backward``.

The schemas and the CPU/CUDA kernels live in C++ (``torch.ops.roi_ops.*``); everything that only needs shapes
(fake kernels for ``torch.compile`` / ``opcheck``) and the backward wiring lives here.

Lazy: ``import ops`` neither compiles nor loads anything. The first op call (or :func:`load`) loads the
library (:mod:`ops._library`: an installed copy's prebuilt one, else a JIT build) and registers the Python
side. So a process that never calls our ops (``roi=align-torchvision``, the analysis tools) needs no compiled
library and no compiler, whoever imports ``ops``.

Shapes: inputs L x [N, C, H_l, W_l], rois [K, 5], levels Int64[K] or None (one map), output and argmax
[K, C, ph, pw] (argmax int32, [0] for the avg modes).
"""

from __future__ import annotations

import threading

import torch
from torch import Tensor

from . import _library
from ._validation import coord_dtype

_ops = torch.ops.roi_ops  # a namespace handle; its ops resolve once the library is loaded
_lock = threading.Lock()
_libraries: list[str] = []  # the loaded libraries' paths; empty until the first load
_cuda_kernels = False


def load(verbose: bool = False) -> list[str]:
    """Loads the ``roi_ops`` library (first call only; thread-safe) and registers its fake kernels and autograd,
    so that ``torch.ops.roi_ops.*`` can be called directly. -> the paths of the libraries in use."""
    global _cuda_kernels
    if _libraries:
        return list(_libraries)
    with _lock:
        if not _libraries:
            paths = _library.load(verbose)
            _register()
            _cuda_kernels = _library.has_cuda_kernels()
            _libraries.extend(paths)
    return list(_libraries)


@torch.compiler.assume_constant_result
def _load_for(cuda: bool) -> bool:
    """load(); then whether there are kernels for the device. Run eagerly even while torch.compile traces a
    caller (a constant to the graph), so that the first op call may come inside a compiled function."""
    load()
    return _cuda_kernels or not cuda


def ready(x: Tensor) -> None:
    """Called by every op before it runs: loads the library on first use; a clear error for a CUDA tensor when
    this install has no CUDA kernels (rather than the dispatcher's "could not run ... 'CUDA' backend")."""
    if not _load_for(x.is_cuda):
        raise RuntimeError(
            "roi_ops: this install of roi-gap has no CUDA kernels (it was built without a CUDA toolkit, or "
            "without ROI_OPS_CUDA=1). Reinstall it where nvcc is found, with ROI_OPS_CUDA=1 "
            "(pip install --no-build-isolation .), or run the ops on CPU tensors."
        )


# ---------------------------------------------------------------------------------------------------
# Fake kernels. rois come in the input dtype or in its coordinate dtype (float32 for float16/bfloat16), like
# the kernels take them.
def _check_rois_dtype(x, rois, what):
    torch._check(
        rois.dtype in (x.dtype, coord_dtype(x.dtype)),
        lambda: f"rois must have the dtype of {what} ({x.dtype}) or {coord_dtype(x.dtype)}, got {rois.dtype}",
    )


def _fake_forward(
    inputs, rois, levels, spatial_scales, kind, pooled_height, pooled_width, sampling_ratio, aligned, max_mode
):
    torch._check(len(inputs) > 0, lambda: "multilevel_roi_forward needs at least one feature map")
    x = inputs[0]
    torch._check(x.dim() == 4, lambda: f"input must be [N, C, H, W], got {tuple(x.shape)}")
    torch._check(rois.dim() == 2 and rois.shape[1] == 5, lambda: f"rois must be [K, 5], got {tuple(rois.shape)}")
    torch._check(
        levels is None or (levels.dim() == 1 and levels.shape[0] == rois.shape[0]), lambda: "levels must be None or [K]"
    )
    _check_rois_dtype(x, rois, "input")
    shape = (rois.shape[0], x.shape[1], pooled_height, pooled_width)
    has_argmax = kind == "pool" or max_mode
    return x.new_empty(shape), x.new_empty(shape if has_argmax else (0,), dtype=torch.int32)


def _fake_backward(
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
    channels_last=False,
):
    _check_rois_dtype(grad, rois, "grad")
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    return [
        torch.empty((batch_size, channels, h, w), dtype=grad.dtype, device=grad.device, memory_format=fmt)
        for h, w in zip(heights, widths, strict=True)
    ]


# ---------------------------------------------------------------------------------------------------
# Autograd: differentiable w.r.t. every feature map (not the boxes or the levels).
def nhwc_maps(features) -> bool:
    """The kernels' layout rule (ops/csrc/map_layout.h): channels_last when every map is channels_last and not
    all of them are also contiguous. The gradients come back in the maps' layout."""
    return all(f.is_contiguous(memory_format=torch.channels_last) for f in features) and not all(
        f.is_contiguous() for f in features
    )


def _setup_context(ctx, inputs, output):
    features, rois, levels = inputs[:3]
    ctx.params = inputs[3:]
    heights, widths = [f.shape[2] for f in features], [f.shape[3] for f in features]
    ctx.shapes = (features[0].shape[0], features[0].shape[1], heights, widths)
    ctx.channels_last = nhwc_maps(features)
    ctx.save_for_backward(rois, levels, output[1])


def _backward(ctx, grad_out, grad_argmax):
    rois, levels, argmax = ctx.saved_tensors
    spatial_scales, kind, ph, pw, sampling_ratio, aligned, max_mode = ctx.params
    batch_size, channels, heights, widths = ctx.shapes
    grads = _ops.multilevel_roi_backward(
        grad_out, rois, levels, argmax, spatial_scales, kind, ph, pw, batch_size, channels, heights, widths,
        sampling_ratio, aligned, max_mode, ctx.channels_last,
    )
    return grads, None, None, None, None, None, None, None, None, None


def _register() -> None:
    torch.library.register_fake("roi_ops::multilevel_roi_forward", _fake_forward)
    torch.library.register_fake("roi_ops::multilevel_roi_backward", _fake_backward)
    torch.library.register_autograd("roi_ops::multilevel_roi_forward", _backward, setup_context=_setup_context)
