"""CUDA kernels of ``ops`` against our CPU kernels and against ``torchvision.ops`` on CUDA.

The max modes and RoIPool must equal the CPU kernels bitwise in the forward (output and argmax) and in the
deterministic backward: both sides evaluate the same expressions in the same order, and neither fuses multiply-adds
(nvcc -fmad=false, g++ -ffp-contract=off; see ops.build). Sums in another order (the avg modes, the atomic
backward) agree to rounding.

Shapes: N images, C channels, H x W map, K RoIs, output ph x pw. Skipped without a CUDA device.
"""

from __future__ import annotations

import pytest
import torch

from tests.conftest import deterministic_algorithms

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]

if torch.cuda.is_available():
    import torchvision

    import ops

    ops.load()  # some tests call torch.ops.roi_ops directly

DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]
# (rtol, atol) of a low-precision result against the same math done in float32/float64.
TOL = {
    torch.float64: (1e-10, 1e-10),
    torch.float32: (1e-5, 1e-5),
    torch.float16: (4e-3, 4e-3),
    torch.bfloat16: (2e-2, 2e-2),
}
# Gradients: float32 sums of many samples round differently (the CUDA kernels sum the separable weights
# first); low precision rounds the float32 sum once more.
GRAD_TOL = {
    torch.float64: (1e-9, 1e-9),
    torch.float32: (1e-4, 1e-4),
    torch.float16: (8e-3, 8e-3),
    torch.bfloat16: (4e-2, 4e-2),
}
SCALE = 0.25  # image 4x the feature map


def make_case(dtype, N=2, C=16, H=20, W=28, K=24, seed=0, channels_last=False):
    """Random map and rois [K, 5] in image coordinates; some boxes are tiny, partly or wholly outside."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(N, C, H, W, generator=g, dtype=torch.float64)
    img_h, img_w = H / SCALE, W / SCALE
    x1 = torch.rand(K, generator=g, dtype=torch.float64) * (img_w + 16) - 16
    y1 = torch.rand(K, generator=g, dtype=torch.float64) * (img_h + 16) - 16
    bw = torch.rand(K, generator=g, dtype=torch.float64) * img_w * 0.8
    bh = torch.rand(K, generator=g, dtype=torch.float64) * img_h * 0.8
    bw[:3] = torch.tensor([0.0, 1.0, 3.0])  # degenerate / tiny boxes
    bh[:3] = torch.tensor([0.0, 2.0, 1.0])
    b = torch.randint(0, N, (K,), generator=g).to(torch.float64)
    rois = torch.stack([b, x1, y1, x1 + bw, y1 + bh], 1)
    rois[3] = torch.tensor([0, img_w + 30, img_h + 30, img_w + 60, img_h + 70])  # outside the map
    rois[4] = torch.tensor([N - 1, -40, -40, img_w + 40, img_h + 40])  # covers more than the map
    x = x.to(dtype)
    rois = rois.to(dtype)
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
    return x, rois


def run(fn, x, rois, grad_seed=1, grad_dtype=None):
    """Forward + backward; returns (output, grad_input) as float64 on the CPU.

    The output gradient is random, rounded through ``grad_dtype`` (default: the output dtype).
    """
    x = x.detach().clone().requires_grad_(True)
    out = fn(x, rois)
    g = torch.Generator().manual_seed(grad_seed)
    go = torch.randn(out.shape, generator=g, dtype=torch.float64).to(grad_dtype or out.dtype)
    go = go.to(out.dtype).to(out.device)
    (gi,) = torch.autograd.grad(out, x, go)
    return out.detach().double().cpu(), gi.double().cpu()


def ours(kind, **kw):
    if kind == "align":
        return lambda x, r: ops.roi_align(x, r, (7, 6), spatial_scale=SCALE, **kw)
    if kind == "warp":
        return lambda x, r: ops.roi_warp(x, r, (7, 6), spatial_scale=SCALE, **kw)
    return lambda x, r: ops.roi_pool(x, r, (7, 6), spatial_scale=SCALE)


CASES = [
    ("align", dict(sampling_ratio=-1, aligned=False, pool_mode="avg")),
    ("align", dict(sampling_ratio=2, aligned=True, pool_mode="avg")),
    ("align", dict(sampling_ratio=-1, aligned=True, pool_mode="max")),
    ("align", dict(sampling_ratio=16, aligned=False, pool_mode="avg")),  # wide bins: per-sample atomics
    ("warp", dict(sampling_ratio=-1, pool_mode="max")),
    ("warp", dict(sampling_ratio=2, pool_mode="avg")),
    ("pool", dict()),
]
CASE_IDS = [f"{k}-{'-'.join(str(v) for v in kw.values())}" for k, kw in CASES]


def picks_a_sample(kw):
    """Max modes and RoIPool (whose kw has no pool_mode): the output is one sample, so CPU and GPU agree bitwise."""
    return kw.get("pool_mode", "max") == "max"


def assert_forward_matches(out_g, out_c, kw, dtype):
    if picks_a_sample(kw):
        assert torch.equal(out_g, out_c), f"{int((out_g != out_c).sum())} of {out_c.numel()} outputs differ"
    else:
        torch.testing.assert_close(out_g, out_c, rtol=TOL[dtype][0], atol=TOL[dtype][1])


@pytest.fixture
def deterministic():
    with deterministic_algorithms(True):
        yield


# ---------------------------------------------------------------------------------------------------
# CUDA vs our CPU kernels (same math), every op / mode / dtype / layout.
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize(("kind", "kw"), CASES, ids=CASE_IDS)
def test_cuda_matches_cpu(kind, kw, dtype, channels_last):
    x, rois = make_case(dtype, channels_last=channels_last)
    fn = ours(kind, **kw)
    out_c, gi_c = run(fn, x, rois)
    out_g, gi_g = run(fn, x.cuda(), rois.cuda())
    assert_forward_matches(out_g, out_c, kw, dtype)
    torch.testing.assert_close(gi_g, gi_c, rtol=GRAD_TOL[dtype][0], atol=GRAD_TOL[dtype][1])  # atomic order


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize(("kind", "kw"), [c for c in CASES if c[1].get("pool_mode", "max") == "max"])
def test_argmax_matches_cpu(kind, kw, dtype):
    x, rois = make_case(dtype)
    args = (kind, 7, 6, kw.get("sampling_ratio", 0), kw.get("aligned", True), True)
    out_c, am_c = torch.ops.roi_ops.multilevel_roi_forward([x], rois, None, [SCALE], *args)
    out_g, am_g = torch.ops.roi_ops.multilevel_roi_forward([x.cuda()], rois.cuda(), None, [SCALE], *args)
    assert am_g.dtype == torch.int32 and am_g.shape == (rois.shape[0], x.shape[1], 7, 6)
    assert torch.equal(am_g.cpu(), am_c) and torch.equal(out_g.cpu(), out_c)
    assert ((am_g >= 0) | (am_g == -1)).all()


@pytest.mark.parametrize("C", [8, 3, 32])
def test_channels_last_vectorized_and_strided(C):
    """NHWC with C % vec == 0 (vector loads), C odd (scalar NHWC), and a non-contiguous slice."""
    x, rois = make_case(torch.float16, C=C, channels_last=True)
    rtol, atol = GRAD_TOL[torch.float16]
    for kind, kw in CASES:
        fn = ours(kind, **kw)
        out_ref, gi_ref = run(fn, x.contiguous().cuda(), rois.cuda())
        out, gi = run(fn, x.cuda(), rois.cuda())
        assert torch.equal(out, out_ref)  # each output element: the same expressions on the same values
        torch.testing.assert_close(gi, gi_ref, rtol=rtol, atol=atol)  # fp16 rounding of differently ordered sums
        sliced = torch.randn(2, 2 * C, 20, 28, device="cuda", dtype=torch.float16)[:, ::2]
        out, gi = run(fn, sliced, rois.cuda())
        out_ref, gi_ref = run(fn, sliced.contiguous(), rois.cuda())
        assert torch.equal(out, out_ref)
        torch.testing.assert_close(gi, gi_ref, rtol=rtol, atol=atol)


# ---------------------------------------------------------------------------------------------------
# CUDA vs torchvision.ops on CUDA (avg RoIAlign and RoIPool must match exactly in semantics).
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("aligned", [False, True])
@pytest.mark.parametrize("sampling_ratio", [-1, 2])
def test_align_matches_torchvision(sampling_ratio, aligned, dtype, channels_last):
    x, rois = make_case(dtype, channels_last=channels_last)
    x, rois = x.cuda(), rois.cuda()
    out, gi = run(ours("align", sampling_ratio=sampling_ratio, aligned=aligned), x, rois)
    # low precision: compare with torchvision in float32 on the same (upcast) values
    ref_dtype = dtype if dtype in (torch.float32, torch.float64) else torch.float32
    tv = lambda x, r: torchvision.ops.roi_align(x, r, (7, 6), SCALE, sampling_ratio, aligned)  # noqa: E731
    out_tv, gi_tv = run(tv, x.to(ref_dtype), rois.to(ref_dtype), grad_dtype=dtype)
    rtol, atol = TOL[dtype]
    torch.testing.assert_close(out, out_tv, rtol=rtol, atol=atol)
    rtol, atol = GRAD_TOL[dtype]
    torch.testing.assert_close(gi, gi_tv, rtol=rtol, atol=atol)


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_pool_matches_torchvision(dtype, channels_last):
    x, rois = make_case(dtype, channels_last=channels_last)
    x, rois = x.cuda(), rois.cuda()
    out, gi = run(ours("pool"), x, rois)
    ref_dtype = dtype if dtype in (torch.float32, torch.float64) else torch.float32
    tv = lambda x, r: torchvision.ops.roi_pool(x, r, (7, 6), SCALE)  # noqa: E731
    out_tv, gi_tv = run(tv, x.to(ref_dtype), rois.to(ref_dtype), grad_dtype=dtype)
    torch.testing.assert_close(out, out_tv, rtol=0, atol=0)  # a max picks an input value: exact
    rtol, atol = GRAD_TOL[dtype]
    torch.testing.assert_close(gi, gi_tv, rtol=rtol, atol=atol)


def test_warp_is_align_on_quantized_box():
    """RoIWarp == RoIAlign(aligned=True, scale 1) on the RoIPool-quantized box, on CUDA."""
    x, rois = make_case(torch.float64)
    x, rois = x.cuda(), rois.cuda()
    q = torch.sign(rois[:, 1:] * SCALE) * torch.floor(torch.abs(rois[:, 1:] * SCALE) + 0.5)
    size = torch.clamp(q[:, 2:] - q[:, :2] + 1, min=1)
    qrois = torch.cat([rois[:, :1], q[:, :2], q[:, :2] + size], 1)
    for mode in ("avg", "max"):
        got = ops.roi_warp(x, rois, (7, 6), SCALE, 2, pool_mode=mode)
        ref = ops.roi_align(x, qrois, (7, 6), 1.0, 2, aligned=True, pool_mode=mode)
        torch.testing.assert_close(got, ref, rtol=0, atol=0)


# ---------------------------------------------------------------------------------------------------
# Deterministic backward: no atomics, bitwise reproducible, same values as the default path.
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize(("kind", "kw"), CASES, ids=CASE_IDS)
def test_deterministic_backward(kind, kw, dtype, deterministic):
    x, rois = make_case(dtype, C=64, H=24, W=40, K=200, seed=3)
    x, rois = x.cuda(), rois.cuda()
    fn = ours(kind, **kw)
    out1, gi1 = run(fn, x, rois)
    out2, gi2 = run(fn, x, rois)
    assert torch.equal(gi1, gi2) and torch.equal(out1, out2)
    torch.use_deterministic_algorithms(False)
    _, gi_atomic = run(fn, x, rois)
    rtol, atol = GRAD_TOL[dtype]
    torch.testing.assert_close(gi1, gi_atomic, rtol=rtol, atol=atol)  # same forward, same argmax
    _, gi_cpu = run(fn, x.cpu(), rois.cpu())
    if picks_a_sample(kw):  # the gather adds each pixel's terms in the CPU kernel's order
        assert torch.equal(gi1, gi_cpu)
    else:
        torch.testing.assert_close(gi1, gi_cpu, rtol=rtol, atol=atol)


# ---------------------------------------------------------------------------------------------------
# Empty inputs.
@pytest.mark.parametrize(("kind", "kw"), CASES, ids=CASE_IDS)
def test_empty_rois(kind, kw):
    x = torch.randn(2, 4, 10, 12, device="cuda", requires_grad=True)
    rois = torch.zeros(0, 5, device="cuda")
    out = ours(kind, **kw)(x, rois)
    assert out.shape == (0, 4, 7, 6) and out.device.type == "cuda"
    out.sum().backward()
    assert x.grad is not None and x.grad.shape == x.shape and not x.grad.any()


@pytest.mark.parametrize(("kind", "kw"), CASES, ids=CASE_IDS)
def test_empty_channels_and_outside_boxes(kind, kw):
    fn = ours(kind, **kw)
    x = torch.randn(2, 0, 10, 12, device="cuda", requires_grad=True)
    rois = torch.tensor([[0, 1.0, 1, 20, 20]], device="cuda")
    out = fn(x, rois)
    assert out.shape == (1, 0, 7, 6)
    # a box far outside the map: zeros, and no gradient
    x = torch.randn(1, 3, 10, 12, device="cuda", requires_grad=True)
    rois = torch.tensor([[0, 500.0, 500, 600, 600]], device="cuda")
    out = fn(x, rois)
    assert out.shape == (1, 3, 7, 6) and not out.any()
    out.sum().backward()
    assert not x.grad.any()


def test_opcheck_cuda():
    x, rois = make_case(torch.float32, C=4, K=6)
    x, rois = x.cuda(), rois.cuda()
    for args in (("align", 7, 6, 2, True, False), ("align", 7, 6, -1, False, True), ("warp", 7, 6, 2, True, True),
                 ("pool", 7, 6, 0, True, True)):
        torch.library.opcheck(torch.ops.roi_ops.multilevel_roi_forward, ([x], rois, None, [SCALE], *args))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize(("kind", "kw"), CASES, ids=CASE_IDS)
def test_low_precision_float32_boxes_matches_cpu(kind, kw, dtype):
    """Half/bf16 input with float32 boxes (the contract): the CUDA kernels read the rois as float32."""
    x, _ = make_case(dtype)
    _, rois = make_case(torch.float32)
    rois[:, 1:] += 0.37  # off the bf16 grid
    fn = ours(kind, **kw)
    out_c, gi_c = run(fn, x, rois)
    out_g, gi_g = run(fn, x.cuda(), rois.cuda())
    assert_forward_matches(out_g, out_c, kw, dtype)
    torch.testing.assert_close(gi_g, gi_c, rtol=GRAD_TOL[dtype][0], atol=GRAD_TOL[dtype][1])


def test_opcheck_cuda_bf16_float32_rois():
    x, _ = make_case(torch.bfloat16, C=4, K=6)
    _, rois = make_case(torch.float32, C=4, K=6)
    x, rois = x.cuda(), rois.cuda()
    for args in (("align", 7, 6, 2, True, False), ("pool", 7, 6, 0, True, True)):
        torch.library.opcheck(torch.ops.roi_ops.multilevel_roi_forward, ([x], rois, None, [SCALE], *args))
    with pytest.raises(RuntimeError, match="rois must have the dtype"):
        torch.ops.roi_ops.multilevel_roi_forward([x], rois.double(), None, [SCALE], "pool", 7, 6, 0, True, True)


# ---------------------------------------------------------------------------------------------------
# One short forward/backward of every kind, mode, layout and backward path, including what validate=False lets
# through (a bad batch index, a bad level). bench/gpu_session.sh runs it under compute-sanitizer memcheck.
ML_CASES = [
    ("align", dict(sampling_ratio=2, aligned=True, pool_mode="avg")),
    ("align", dict(sampling_ratio=-1, aligned=False, pool_mode="max")),
    ("warp", dict(sampling_ratio=2, pool_mode="max")),
    ("warp", dict(sampling_ratio=-1, pool_mode="avg")),
    ("pool", dict()),
]


@pytest.mark.parametrize("deterministic", [False, True], ids=["atomic", "deterministic"])
@pytest.mark.parametrize("layout", ["nchw", "nhwc", "nhwc_vec"])
def test_sanitizer_smoke_every_op_and_mode(layout, deterministic):
    C = {"nchw": 4, "nhwc": 3, "nhwc_vec": 8}[layout]
    scales = [SCALE, SCALE / 2, SCALE / 4]
    g = torch.Generator().manual_seed(7)
    maps = [torch.randn(2, C, 20 // s, 28 // s, generator=g) for s in (1, 2, 4)]
    x, rois = make_case(torch.float32, C=C, K=12)
    levels = torch.randint(0, 3, (12,), generator=g)
    rois[5, 0], levels[6] = 2.0, 3  # batch index == N and a level == L: output 0, no gradient
    good = torch.ones(12, dtype=torch.bool)
    good[5:7] = False
    fmt = torch.contiguous_format if layout == "nchw" else torch.channels_last
    with deterministic_algorithms(deterministic):
        for kind, kw in ML_CASES:
            on_gpu = [m.cuda().contiguous(memory_format=fmt).requires_grad_() for m in maps]
            out = ops.multilevel_roi(on_gpu, rois.cuda(), levels.cuda(), 3, scales, kind, validate=False, **kw)
            out.square().sum().backward()
            ref = ops.multilevel_roi(maps, rois[good], levels[good], 3, scales, kind, **kw)
            assert not out[~good].any() and all(torch.isfinite(m.grad).all() for m in on_gpu)
            torch.testing.assert_close(out[good].cpu(), ref, rtol=1e-5, atol=1e-5)
            single = ours(kind, **kw)(x.cuda().contiguous(memory_format=fmt).requires_grad_(), rois[good].cuda())
            single.sum().backward()
