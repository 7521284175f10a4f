"""``ops.multilevel_roi``: all pyramid levels in one call, against the single-level ops level by level and
against the float64 reference. The CPU tests run on each CPU route (the ``layout`` fixture: NCHW maps plane by
plane or through channel blocks, channels_last maps). CUDA tests are skipped without a device.

Shapes: N images, C channels, L levels of H_l x W_l, K RoIs, output ph x pw.
"""

from __future__ import annotations

import pytest
import torch

import ops
from ops.reference import roi_align_ref, roi_pool_ref, roi_warp_ref
from tests.conftest import deterministic_algorithms

pytestmark = pytest.mark.usefixtures("all_cores")

ops.load()  # some tests call torch.ops.roi_ops directly
SHAPES = [(24, 30), (12, 15), (6, 8), (3, 4)]  # strides 4, 8, 16, 32 of a 96 x 120 image
SCALES = [1 / 4, 1 / 8, 1 / 16, 1 / 32]
# (kind, keyword arguments of multilevel_roi); the single-level op takes the same keywords.
CASES = [
    ("align", dict(sampling_ratio=2, aligned=True, pool_mode="avg")),
    ("align", dict(sampling_ratio=-1, aligned=False, pool_mode="avg")),
    ("align", dict(sampling_ratio=-1, aligned=True, pool_mode="max")),
    ("warp", dict(sampling_ratio=2, pool_mode="max")),
    ("warp", dict(sampling_ratio=-1, pool_mode="avg")),
    ("pool", dict()),
]
CASE_IDS = [f"{k}-{'-'.join(str(v) for v in kw.values())}" for k, kw in CASES]
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.fixture(params=["nchw", "nchw_blocked", "channels_last"])
def layout(request, monkeypatch):
    """The CPU routes (ops/csrc/cpu/layout.h); the automatic choice for NCHW maps is forced either way."""
    monkeypatch.setenv("ROI_OPS_NCHW_KERNEL", "blocked" if request.param == "nchw_blocked" else "planes")
    return request.param


def make_pyramid(dtype=torch.float32, N=2, C=3, K=40, seed=0, device="cpu", layout="nchw"):
    """Random pyramid, rois [K, 5] in image coordinates (some partly outside or tiny) and random levels [K]."""
    g = torch.Generator().manual_seed(seed)
    fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
    features = [
        torch.randn(N, C, h, w, generator=g, dtype=torch.float64).to(dtype).contiguous(memory_format=fmt)
        for h, w in SHAPES
    ]
    xy = torch.rand(K, 2, generator=g, dtype=torch.float64) * torch.tensor([140.0, 110.0]) - 10
    wh = torch.rand(K, 2, generator=g, dtype=torch.float64) * 80
    wh[::7] *= 0.01
    batch = torch.randint(0, N, (K, 1), generator=g).double()
    coord = torch.float64 if dtype == torch.float64 else torch.float32
    rois = torch.cat([batch, xy, xy + wh], 1).to(coord)
    levels = torch.randint(0, len(SHAPES), (K,), generator=g)
    return [f.to(device) for f in features], rois.to(device), levels.to(device)


def single_level(kind, kw, x, rois, scale):
    if kind == "align":
        return ops.roi_align(x, rois, (5, 4), scale, **kw)
    if kind == "warp":
        return ops.roi_warp(x, rois, (5, 4), scale, **kw)
    return ops.roi_pool(x, rois, (5, 4), scale)


def reference(kind, kw, x, rois, scale):
    if kind == "align":
        return roi_align_ref(x, rois, (5, 4), scale, kw["sampling_ratio"], kw["aligned"], kw["pool_mode"])
    if kind == "warp":
        return roi_warp_ref(x, rois, (5, 4), scale, kw["sampling_ratio"], kw["pool_mode"])
    return roi_pool_ref(x, rois, (5, 4), scale)


def level_by_level(fn, kind, kw, features, rois, levels):
    """Output [K, C, 5, 4] of the single-level ``fn`` run on each level's rois, put back in RoI order."""
    out = None
    for level, (x, scale) in enumerate(zip(features, SCALES, strict=True)):
        rows = levels == level
        pooled = fn(kind, kw, x, rois[rows], scale)
        if out is None:
            out = pooled.new_zeros((rois.shape[0], *pooled.shape[1:]))
        out = out.index_put((rows.nonzero()[:, 0],), pooled)
    return out


def forward_backward(fn, features, seed=1):
    """Output and the gradients of every level for a fixed random output gradient."""
    features = [f.detach().clone().requires_grad_() for f in features]
    out = fn(features)
    g = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    grads = torch.autograd.grad(out, features, g.to(out.dtype).to(out.device), allow_unused=True)
    grads = [torch.zeros_like(f) if gr is None else gr for f, gr in zip(features, grads, strict=True)]
    return out.detach(), grads


def fused(kind, kw, rois, levels):
    return lambda features: ops.multilevel_roi(features, rois, levels, (5, 4), SCALES, kind, **kw)


def per_level(kind, kw, rois, levels, fn=single_level):
    return lambda features: level_by_level(fn, kind, kw, features, rois, levels)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize(("kind", "kw"), CASES, ids=CASE_IDS)
def test_equals_single_level_ops_bitwise(kind, kw, dtype, layout):
    """Same samples, same per-element summation order (RoIs in ascending order) -> bitwise equal."""
    features, rois, levels = make_pyramid(dtype, layout=layout)
    out, grads = forward_backward(fused(kind, kw, rois, levels), features)
    ref_out, ref_grads = forward_backward(per_level(kind, kw, rois, levels), features)
    assert torch.equal(out, ref_out)
    for grad, ref in zip(grads, ref_grads, strict=True):
        assert torch.equal(grad, ref)
    assert all(bool(g.abs().sum() > 0) for g in grads), "every level should receive gradient"


@pytest.mark.parametrize(("kind", "kw"), CASES, ids=CASE_IDS)
def test_matches_float64_reference(kind, kw, layout):
    features, rois, levels = make_pyramid(torch.float64, K=12, C=2, layout=layout)
    out, grads = forward_backward(fused(kind, kw, rois, levels), features)
    ref_out, ref_grads = forward_backward(per_level(kind, kw, rois, levels, fn=reference), features)
    torch.testing.assert_close(out, ref_out, rtol=1e-9, atol=1e-9)
    for grad, ref in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(grad, ref, rtol=1e-9, atol=1e-9)


def test_gradcheck(layout):
    features, rois, levels = make_pyramid(torch.float64, N=1, C=2, K=5, layout=layout)
    features = [f[..., :6, :6].detach().clone().requires_grad_() for f in features[:2]]
    fn = lambda *fs: ops.multilevel_roi(list(fs), rois, levels % 2, 2, SCALES[:2], "align", 2, True)  # noqa: E731
    assert torch.autograd.gradcheck(fn, tuple(features))


@pytest.mark.parametrize(("kind", "kw"), CASES, ids=CASE_IDS)
def test_opcheck(kind, kw, layout):
    features, rois, levels = make_pyramid(torch.float32, K=8, layout=layout)
    features = [f.requires_grad_() for f in features]
    max_mode = kw.get("pool_mode") == "max"
    args = (features, rois, levels, SCALES, kind, 3, 2, kw.get("sampling_ratio", 0), kw.get("aligned", True), max_mode)
    torch.library.opcheck(torch.ops.roi_ops.multilevel_roi_forward, args)


def test_one_level_is_the_single_level_op(layout):
    features, rois, _ = make_pyramid(torch.float32, layout=layout)
    levels = torch.zeros(rois.shape[0], dtype=torch.int64)
    out = ops.multilevel_roi(features[:1], rois, levels, 7, SCALES[:1], "align", 2, True)
    assert torch.equal(out, ops.roi_align(features[0], rois, 7, SCALES[0], 2, True))


def test_empty_rois_give_empty_output_and_zero_gradients(layout):
    features, rois, levels = make_pyramid(torch.float32, layout=layout)
    out, grads = forward_backward(fused("align", CASES[0][1], rois[:0], levels[:0]), features)
    assert out.shape == (0, 3, 5, 4)
    assert all(bool((g == 0).all()) for g in grads)


def test_bad_arguments_have_clear_errors(layout):
    features, rois, levels = make_pyramid(torch.float32, layout=layout)
    call = ops.multilevel_roi
    with pytest.raises(ValueError, match="level 4 of RoI row 3 is outside"):
        call(features, rois, levels.index_fill(0, torch.tensor([3]), 4), 7, SCALES)
    with pytest.raises(ValueError, match="int64 Tensor"):
        call(features, rois, levels.int(), 7, SCALES)
    with pytest.raises(ValueError, match="4 feature maps but 3 spatial_scales"):
        call(features, rois, levels, 7, SCALES[:3])
    with pytest.raises(ValueError, match=r"features\[2\] .* same dtype, device, N and C"):
        call(features[:2] + [features[2][:, :2]] + features[3:], rois, levels, 7, SCALES)
    with pytest.raises(ValueError, match="kind must be one of"):
        call(features, rois, levels, 7, SCALES, kind="bilinear")
    with pytest.raises(ValueError, match="features is empty"):
        call([], rois, levels, 7, [])
    with pytest.raises(ValueError, match="RoI row 5 has a non-finite value"):
        call(features, rois.index_fill(0, torch.tensor([5]), float("nan")), levels, 7, SCALES)


def test_direct_op_call_checks_levels_in_cpp(layout):
    """The raw op (what validate=False reaches) still refuses a bad level on the CPU, naming the row."""
    features, rois, levels = make_pyramid(torch.float32, layout=layout)
    levels[7] = -1
    with pytest.raises(RuntimeError, match="level -1 of RoI row 7 is outside"):
        torch.ops.roi_ops.multilevel_roi_forward(features, rois, levels, SCALES, "align", 7, 7, 2, True, False)
    with pytest.raises(RuntimeError, match="kind must be"):
        torch.ops.roi_ops.multilevel_roi_forward(features, rois, levels, SCALES, "nope", 7, 7, 2, True, False)


# ---------------------------------------------------------------------------------------------------
# CUDA
@cuda
@pytest.mark.cuda
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16], ids=str)
@pytest.mark.parametrize(("kind", "kw"), CASES, ids=CASE_IDS)
def test_cuda_matches_cpu(kind, kw, dtype, channels_last):
    features, rois, levels = make_pyramid(dtype, C=16)
    cpu_out, cpu_grads = forward_backward(fused(kind, kw, rois, levels), features)
    on_gpu = [f.cuda() for f in features]
    if channels_last:
        on_gpu = [f.to(memory_format=torch.channels_last) for f in on_gpu]
    out, grads = forward_backward(fused(kind, kw, rois.cuda(), levels.cuda()), on_gpu)
    tol = {torch.float64: 1e-9, torch.float32: 1e-4, torch.bfloat16: 4e-2}[dtype]
    if kw.get("pool_mode", "max") == "max":  # one sample per output, computed alike (no FMA on either side)
        assert torch.equal(out.cpu(), cpu_out)
    else:
        torch.testing.assert_close(out.cpu().double(), cpu_out.double(), rtol=tol, atol=tol)
    for grad, ref in zip(grads, cpu_grads, strict=True):  # atomic order
        torch.testing.assert_close(grad.cpu().double(), ref.double(), rtol=tol, atol=tol)


@cuda
@pytest.mark.cuda
@pytest.mark.parametrize(("kind", "kw"), CASES, ids=CASE_IDS)
def test_cuda_deterministic_equals_single_level_bitwise(kind, kw):
    """The deterministic backward gathers in RoI order per owned pixel, so it matches the per-level ops."""
    features, rois, levels = make_pyramid(torch.float32, C=16, device="cuda")
    with deterministic_algorithms(True):
        out, grads = forward_backward(fused(kind, kw, rois, levels), features)
        ref_out, ref_grads = forward_backward(per_level(kind, kw, rois, levels), features)
    assert torch.equal(out, ref_out)
    for grad, ref in zip(grads, ref_grads, strict=True):
        assert torch.equal(grad, ref)


@cuda
@pytest.mark.cuda
def test_cuda_no_host_sync_without_validation():
    """With validate=False the fused op neither syncs in forward nor in backward (sync debug mode errors)."""
    features, rois, levels = make_pyramid(torch.float32, C=16, device="cuda")
    features = [f.requires_grad_() for f in features]
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        out = ops.multilevel_roi(features, rois, levels, 7, SCALES, "align", 2, True, validate=False)
        out.sum().backward()
    finally:
        torch.cuda.set_sync_debug_mode(0)
    assert all(f.grad is not None for f in features)


@cuda
@pytest.mark.cuda
@pytest.mark.parametrize("deterministic", [False, True], ids=["atomic", "deterministic"])
@pytest.mark.parametrize(("kind", "kw"), CASES, ids=CASE_IDS)
def test_cuda_bad_levels_and_empty_maps_without_validation(kind, kw, deterministic):
    """validate=False on the GPU: a RoI with a level outside [0, L) outputs 0 and sends no gradient; a
    level with an empty map is harmless; the valid RoIs are unaffected."""
    features, rois, levels = make_pyramid(torch.float32, C=16, device="cuda")
    features[3] = features[3][:, :, :0]  # an empty top level
    levels[:4] = torch.tensor([-1, 4, 9, 3], device="cuda")
    with deterministic_algorithms(deterministic):
        call = lambda fs: ops.multilevel_roi(fs, rois, levels, (5, 4), SCALES, kind, validate=False, **kw)  # noqa: E731
        out, grads = forward_backward(call, features)
        valid = levels < 3  # level 3 has no pixels: its RoIs output 0 too
        valid[:4] = False
        ref_out, ref_grads = forward_backward(
            lambda fs: ops.multilevel_roi(fs[:3], rois[valid], levels[valid], (5, 4), SCALES[:3], kind, **kw),
            features,
        )
    assert bool((out[~valid] == 0).all())
    torch.testing.assert_close(out[valid], ref_out)
    assert grads[3].numel() == 0
    for grad, ref in zip(grads[:3], ref_grads[:3], strict=True):
        torch.testing.assert_close(grad, ref, rtol=1e-4, atol=1e-4)
