"""Tests of ``ops`` (CPU kernels) against torchvision.ops and the float64 reference in ``ops.reference``.

Every op test runs on each CPU route (the ``layout`` fixture): NCHW maps plane by plane, NCHW maps through
channel blocks, and channels_last maps (see ops/csrc/cpu/layout.h), with the same tolerances.

Shapes: N images, C channels, H x W map, K RoIs, output ph x pw.
"""

from __future__ import annotations

import itertools

import pytest
import torch
import torchvision

import ops
from ops.reference import roi_align_ref, roi_pool_ref, roi_warp_ref
from tests.conftest import deterministic_algorithms, torch_threads

pytestmark = pytest.mark.usefixtures("all_cores")

ops.load()  # some tests call torch.ops.roi_ops directly
TOL = {torch.float64: 1e-9, torch.float32: 1e-5}
# The CPU routes. The automatic choice for NCHW maps depends on the RoI density (and C), so the tests force it.
LAYOUTS = ["nchw", "nchw_blocked", "channels_last"]


@pytest.fixture(params=LAYOUTS)
def layout(request, monkeypatch):
    monkeypatch.setenv("ROI_OPS_NCHW_KERNEL", "blocked" if request.param == "nchw_blocked" else "planes")
    return request.param


def in_layout(x, layout):
    """x [N, C, H, W] stored channels_last for the channels_last route, contiguous otherwise."""
    fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
    return x.contiguous(memory_format=fmt)


def make_rois(K, N, H, W, dtype, seed, inverted=True):
    """Random boxes in input-image coordinates (scale up to 2x the map): normal, partly/fully outside, tiny,
    and (optionally) inverted."""
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(K, 2, generator=g, dtype=torch.float64) * torch.tensor([2 * W + 8, 2 * H + 8]) - 6
    wh = torch.rand(K, 2, generator=g, dtype=torch.float64) * torch.tensor([W, H]) * 1.5
    kind = torch.arange(K) % 5
    wh[kind == 1] = torch.rand(int((kind == 1).sum()), 2, generator=g, dtype=torch.float64) * 0.3  # tiny
    if inverted:
        wh[kind == 2] = -wh[kind == 2] * 0.5  # inverted
    xy[kind == 3] = xy[kind == 3] - 3 * max(H, W)  # fully outside
    boxes = torch.cat([xy, xy + wh], 1)
    batch = torch.randint(0, N, (K, 1), generator=g).double()
    return torch.cat([batch, boxes], 1).to(dtype)


def run(fn, x, *args, grad_seed=0, **kwargs):
    """Output and input gradient for a fixed random output gradient."""
    x = x.detach().clone().requires_grad_()
    out = fn(x, *args, **kwargs)
    g = torch.randn(out.shape, generator=torch.Generator().manual_seed(grad_seed), dtype=torch.float64)
    if not out.requires_grad:  # e.g. the reference on boxes that are entirely outside the map
        return out, torch.zeros_like(x)
    out.backward(g.to(out.dtype))
    return out.detach(), x.grad


def assert_close(a, b, tol):
    torch.testing.assert_close(a, b, rtol=tol, atol=tol)


def raw_forward(x, rois, kind, scale, ph, pw, sampling_ratio=0, aligned=True, max_mode=True):
    """The schema's forward on one map, bypassing the Python checks: (output, argmax)."""
    args = ([x], rois, None, [scale], kind, ph, pw, sampling_ratio, aligned, max_mode)
    return torch.ops.roi_ops.multilevel_roi_forward(*args)


def raw_backward(
    grad, rois, argmax, kind, scale, N, C, H, W, sampling_ratio=0, aligned=True, max_mode=True, pooled=2, layout="nchw"
):
    """The schema's backward on one map [N, C, H, W] and pooled x pooled bins, bypassing the Python checks."""
    ph = pw = pooled
    args = (grad, rois, None, argmax, [scale], kind, ph, pw, N, C, [H], [W], sampling_ratio, aligned, max_mode)
    return torch.ops.roi_ops.multilevel_roi_backward(*args, channels_last=layout == "channels_last")[0]


# ---------------------------------------------------------------------------------------------------
# Against torchvision
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("aligned", [False, True])
def test_roi_align_matches_torchvision(dtype, aligned, layout):
    x = in_layout(torch.randn(2, 3, 9, 11, dtype=dtype), layout)
    for sr, scale, size in itertools.product([-1, 0, 1, 2], [1.0, 0.5, 0.3], [(1, 1), (2, 3), (7, 7)]):
        # torchvision's CPU kernel crashes on inverted boxes with aligned=True and adaptive sampling
        rois = make_rois(10, 2, 9, 11, dtype, seed=sr + 7, inverted=not aligned or sr > 0)
        ours = run(ops.roi_align, x, rois, size, scale, sr, aligned)
        ref = run(torchvision.ops.roi_align, x, rois, size, scale, sr, aligned)
        assert_close(ours[0], ref[0], TOL[dtype])
        assert_close(ours[1], ref[1], TOL[dtype])


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_roi_pool_matches_torchvision(dtype, layout):
    x = in_layout(torch.randn(2, 3, 9, 11, dtype=dtype), layout)
    for scale, size in itertools.product([1.0, 0.5, 0.3], [(1, 1), (2, 3), (7, 7)]):
        rois = make_rois(12, 2, 9, 11, dtype, seed=3)
        ours = run(ops.roi_pool, x, rois, size, scale)
        ref = run(torchvision.ops.roi_pool, x, rois, size, scale)
        assert_close(ours[0], ref[0], TOL[dtype])
        assert_close(ours[1], ref[1], TOL[dtype])


@pytest.mark.parametrize("scale", [1 / 4, 1 / 32])
def test_float32_roi_align_is_as_accurate_as_torchvision(scale, layout):
    """Against the float64 result, our float32 RoIAlign errs no more than torchvision's, forward and backward
    (the two interpolate in different orders, so they differ from each other by rounding)."""
    # Inputs representable in float32, so only the ops' arithmetic differs from the float64 result.
    x = in_layout((torch.randn(2, 16, 48, 48, generator=torch.Generator().manual_seed(5)) * 3).double(), layout)
    rois = make_rois(200, 2, 48 / scale, 48 / scale, torch.float32, seed=5).double()
    exact = run(torchvision.ops.roi_align, x, rois, (14, 14), scale, 2, True)
    ours = run(lambda t, r: ops.roi_align(t, r, (14, 14), scale, 2, True), x.float(), rois.float())
    tv = run(torchvision.ops.roi_align, x.float(), rois.float(), (14, 14), scale, 2, True)
    for i in range(2):
        err_ours = (ours[i].double() - exact[i]).abs().max().item()
        err_tv = (tv[i].double() - exact[i]).abs().max().item()
        assert 0 < err_ours <= 1.05 * err_tv, (i, err_ours, err_tv)


def test_list_of_boxes_matches_tensor_form(layout):
    x = in_layout(torch.randn(2, 3, 9, 11), layout)
    rois = make_rois(8, 2, 9, 11, torch.float32, seed=5)
    boxes = [rois[rois[:, 0] == i, 1:] for i in range(2)]
    rois_sorted = torch.cat([rois[rois[:, 0] == i] for i in range(2)])
    for fn in (ops.roi_align, ops.roi_pool, ops.roi_warp):
        assert torch.equal(fn(x, boxes, 3), fn(x, rois_sorted, 3))
    assert_close(ops.roi_align(x, boxes, 3), torchvision.ops.roi_align(x, boxes, 3), 1e-5)


# ---------------------------------------------------------------------------------------------------
# Against the float64 reference (including max mode and RoIWarp)
CASES = [
    ("align", "avg", False),
    ("align", "avg", True),
    ("align", "max", False),
    ("align", "max", True),
    ("warp", "max", None),
    ("warp", "avg", None),
    ("pool", None, None),
]


def call(op, mode, aligned, impl, x, rois, size, scale, sr):
    if op == "align":
        fn = ops.roi_align if impl == "ours" else roi_align_ref
        return fn(x, rois, size, scale, sr, aligned, mode)
    if op == "warp":
        fn = ops.roi_warp if impl == "ours" else roi_warp_ref
        return fn(x, rois, size, scale, sr, mode)
    fn = ops.roi_pool if impl == "ours" else roi_pool_ref
    return fn(x, rois, size, scale)


@pytest.mark.parametrize("op,mode,aligned", CASES)
def test_matches_reference_float64(op, mode, aligned, layout):
    x = in_layout(torch.randn(2, 2, 7, 8, dtype=torch.float64), layout)
    for i, (sr, scale, size) in enumerate(itertools.product([0, 2], [1.0, 0.5], [(1, 1), (3, 2)])):
        rois = make_rois(6, 2, 7, 8, torch.float64, seed=i)
        ours = run(lambda t, r=rois, s=size, c=scale, q=sr: call(op, mode, aligned, "ours", t, r, s, c, q), x)
        ref = run(lambda t, r=rois, s=size, c=scale, q=sr: call(op, mode, aligned, "ref", t, r, s, c, q), x)
        assert_close(ours[0], ref[0], 1e-9)
        assert_close(ours[1], ref[1], 1e-9)


def test_roi_warp_is_align_on_quantized_box(layout):
    """The documented definition: RoIAlign(aligned=True, scale=1) on [x1q, y1q, x1q + w, y1q + h]."""
    x = in_layout(torch.randn(1, 3, 12, 12, dtype=torch.float64), layout)
    rois = torch.tensor([[0, 2.4, 3.5, 9.6, 7.49], [0, -2.5, 1.2, 4.5, 2.5]], dtype=torch.float64)
    scale = 0.5
    q = torch.tensor([[0, 1, 2, 1 + 5, 2 + 3], [0, -1, 1, -1 + 4, 1 + 1]], dtype=torch.float64)
    for mode in ("avg", "max"):
        warp = ops.roi_warp(x, rois, (3, 4), scale, 2, mode)
        align = ops.roi_align(x, q, (3, 4), 1.0, 2, aligned=True, pool_mode=mode)
        assert torch.equal(warp, align)


# ---------------------------------------------------------------------------------------------------
# Hand-written expectations on a ramp map v(h, w) = 10 h + w (bilinear interpolation of it is exact), in three
# channels v, v + 100, v + 200 (so that the layouts differ in memory); every op here commutes with the offset.
RAMP = (10 * torch.arange(4.0)[:, None] + torch.arange(5.0)[None, :]).reshape(1, 1, 4, 5)
OFFSETS = torch.tensor([0.0, 100.0, 200.0]).reshape(1, 3, 1, 1)
BOX = torch.tensor([[0.0, 1, 1, 3, 3]])


def ramp(layout):
    return in_layout(RAMP + OFFSETS, layout)


def channels(plane):
    """Expected [1, 3, ph, pw] from the first channel's [ph, pw]."""
    return torch.tensor(plane).reshape(1, 1, *torch.tensor(plane).shape) + OFFSETS


def test_literal_roi_align(layout):
    x = ramp(layout)
    assert torch.equal(ops.roi_align(x, BOX, 2, 1.0, 2, aligned=False), channels([[16.5, 17.5], [26.5, 27.5]]))
    assert torch.equal(ops.roi_align(x, BOX, 2, 1.0, 2, aligned=True), channels([[11.0, 12.0], [21.0, 22.0]]))
    # same box at spatial_scale 0.5 from image coordinates
    assert torch.equal(
        ops.roi_align(x, BOX * torch.tensor([1, 2, 2, 2, 2]), 2, 0.5, 2), channels([[16.5, 17.5], [26.5, 27.5]])
    )


def test_literal_roi_pool(layout):
    x = ramp(layout)
    out, argmax = raw_forward(x, BOX, "pool", 1.0, 2, 2)
    assert torch.equal(out, channels([[22.0, 23.0], [32.0, 33.0]]))
    assert torch.equal(argmax, torch.tensor([[[[12, 13], [17, 18]]]], dtype=torch.int32).expand(1, 3, 2, 2))
    assert torch.equal(ops.roi_pool(x, BOX, 2), out)


def test_literal_roi_warp(layout):
    # quantized cells 1..3 -> interval [0.5, 3.5], bins of 1.5, samples at 0.875, 1.625 | 2.375, 3.125;
    # y = 3.125 snaps to the last row (3).
    x = ramp(layout)
    assert torch.equal(ops.roi_warp(x, BOX, 2, 1.0, 2, "max"), channels([[17.875, 19.375], [31.625, 33.125]]))
    assert torch.equal(ops.roi_warp(x, BOX, 2, 1.0, 2, "avg"), channels([[13.75, 15.25], [28.125, 29.625]]))


def test_max_mode_outside_samples_compete_with_zero(layout):
    x = in_layout(torch.full((1, 3, 6, 6), -1.0), layout).requires_grad_()
    rois = torch.tensor([[0.0, -4, -4, 2, 2], [0.0, 1, 1, 4, 4], [0.0, 20, 20, 30, 30]])
    out = ops.roi_align(x, rois, 2, 1.0, 2, pool_mode="max")
    assert torch.equal(out[0, :, 0, 0], torch.zeros(3))  # bin with outside samples: 0 beats -1
    assert torch.equal(out[1], -torch.ones(3, 2, 2))  # fully inside
    assert torch.equal(out[2], torch.zeros(3, 2, 2))  # fully outside
    out[2].sum().backward()
    assert torch.equal(x.grad, torch.zeros_like(x))  # outside winners get no gradient
    _, argmax = raw_forward(x.detach(), rois, "align", 1.0, 2, 2, 2, False, True)
    assert argmax[2].eq(0).all() and argmax.ge(0).all()


# ---------------------------------------------------------------------------------------------------
# Autograd / torch.library integration
@pytest.mark.parametrize("op,mode,aligned", CASES)
def test_gradcheck(op, mode, aligned, layout):
    x = in_layout(torch.randn(1, 2, 5, 6, dtype=torch.float64), layout).requires_grad_()
    rois = torch.tensor([[0, 0.3, 0.7, 4.2, 3.9], [0, -1.3, 1.1, 2.2, 6.0]], dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda t: call(op, mode, aligned, "ours", t, rois, (2, 3), 1.0, 2), (x,))


@pytest.mark.parametrize("op,mode,aligned", CASES)
def test_opcheck(op, mode, aligned, layout):
    x = in_layout(torch.randn(2, 3, 6, 7), layout).requires_grad_()
    rois = make_rois(4, 2, 6, 7, torch.float32, seed=1)
    args = ([x], rois, None, [0.5], op, 2, 3, 2, bool(aligned), mode != "avg")
    torch.library.opcheck(torch.ops.roi_ops.multilevel_roi_forward, args)


def test_opcheck_bf16_input_float32_rois(layout):
    x = in_layout(torch.randn(2, 3, 6, 7).bfloat16(), layout).requires_grad_()
    rois = make_rois(4, 2, 6, 7, torch.float32, seed=1)
    for kind, max_mode in (("align", False), ("warp", True), ("pool", True)):
        args = ([x], rois, None, [0.5], kind, 2, 3, 2, True, max_mode)
        torch.library.opcheck(torch.ops.roi_ops.multilevel_roi_forward, args)


def test_torch_compile_fullgraph(layout):
    def f(x, rois):
        return (
            (
                ops.roi_align(x, rois, 3, 0.5, 2, True)
                + ops.roi_pool(x, rois, 3, 0.5)
                + ops.roi_warp(x, rois, 3, 0.5)
            )
            .relu()
            .sum()
        )

    x = in_layout(torch.randn(2, 3, 8, 8), layout).requires_grad_()
    rois = make_rois(5, 2, 8, 8, torch.float32, seed=2)
    compiled = torch.compile(f, fullgraph=True, backend="aot_eager")
    out = compiled(x, rois)
    (g,) = torch.autograd.grad(out, x)
    (g_ref,) = torch.autograd.grad(f(x, rois), x)
    assert torch.allclose(out, f(x, rois)) and torch.allclose(g, g_ref)


def test_backward_is_deterministic(layout):
    x = in_layout(torch.randn(2, 8, 16, 16), layout)
    rois = make_rois(64, 2, 16, 16, torch.float32, seed=4)
    with deterministic_algorithms(True):
        for fn in (
            lambda t: ops.roi_align(t, rois, 5, 1.0, 0),
            lambda t: ops.roi_pool(t, rois, 5),
            lambda t: ops.roi_warp(t, rois, 5),
        ):
            g1, g2 = run(fn, x)[1], run(fn, x)[1]
            assert torch.equal(g1, g2)
            with torch_threads(1):
                assert torch.equal(run(fn, x)[1], g1)  # independent of the number of threads too


# ---------------------------------------------------------------------------------------------------
# Dtypes and memory layouts
@pytest.mark.parametrize("dtype,tol", [(torch.float16, 2e-3), (torch.bfloat16, 2e-2)])
@pytest.mark.parametrize("op,mode,aligned", CASES)
def test_low_precision(dtype, tol, op, mode, aligned, layout):
    x = in_layout(torch.randn(2, 3, 9, 11), layout)
    rois = make_rois(8, 2, 9, 11, torch.float32, seed=6).to(dtype).float()  # boxes exactly representable
    ref = run(lambda t: call(op, mode, aligned, "ours", t, rois, 3, 0.5, 2), x.to(dtype).float())
    low = run(lambda t: call(op, mode, aligned, "ours", t, rois.to(dtype), 3, 0.5, 2), x.to(dtype))
    assert low[0].dtype == dtype and low[1].dtype == dtype
    torch.testing.assert_close(low[0].float(), ref[0], rtol=tol, atol=tol)
    torch.testing.assert_close(low[1].float(), ref[1], rtol=tol, atol=tol)


@pytest.mark.parametrize("op,mode,aligned", CASES)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_input_uses_float32_boxes(op, mode, aligned, dtype, layout):
    """Half/bf16 input with float32 boxes (not representable in bf16): the geometry runs on the float32 boxes,
    so the result equals the float32 op on the rounded input, to low-precision tolerance. Half/bf16 boxes are
    upcast (the geometry never runs in the low-precision dtype)."""
    tol = 2e-3 if dtype == torch.float16 else 2e-2
    x = in_layout(torch.randn(2, 3, 20, 24), layout)
    rois = make_rois(10, 2, 20 * 32, 24 * 32, torch.float32, seed=11)  # image coords up to ~1500 px
    rois[:, 1:] += 0.3  # certainly not on the bf16 grid
    assert not torch.equal(rois.to(torch.bfloat16).float(), rois)
    ref = run(lambda t: call(op, mode, aligned, "ours", t, rois, 3, 1 / 32, 2), x.to(dtype).float())
    low = run(lambda t: call(op, mode, aligned, "ours", t, rois, 3, 1 / 32, 2), x.to(dtype))
    assert low[0].dtype == dtype and low[1].dtype == dtype
    torch.testing.assert_close(low[0].float(), ref[0], rtol=tol, atol=tol)
    torch.testing.assert_close(low[1].float(), ref[1], rtol=tol, atol=tol)
    boxes = [rois[rois[:, 0] == i, 1:] for i in range(2)]
    rois_sorted = torch.cat([rois[rois[:, 0] == i] for i in range(2)])
    list_form = call(op, mode, aligned, "ours", x.to(dtype), boxes, 3, 1 / 32, 2)
    assert torch.equal(list_form, call(op, mode, aligned, "ours", x.to(dtype), rois_sorted, 3, 1 / 32, 2))
    # low-precision boxes are accepted and mean exactly their (rounded) value in float32
    rounded = rois.to(dtype)
    assert torch.equal(
        call(op, mode, aligned, "ours", x.to(dtype), rounded, 3, 1 / 32, 2),
        call(op, mode, aligned, "ours", x.to(dtype), rounded.float(), 3, 1 / 32, 2),
    )


def test_bf16_boxes_would_misalign(layout):
    """Why boxes stay float32: rounding corners near 1000 px to bfloat16 moves them by up to 4 px."""
    x = in_layout(torch.randn(1, 4, 40, 40), layout)
    rois = torch.tensor([[0.0, 901.3, 777.7, 1203.9, 1011.1]])
    exact = ops.roi_align(x.bfloat16(), rois, 7, 1 / 32, 2, aligned=True).float()
    rounded = ops.roi_align(x.bfloat16(), rois.bfloat16(), 7, 1 / 32, 2, aligned=True).float()
    ref = ops.roi_align(x.bfloat16().float(), rois, 7, 1 / 32, 2, aligned=True)
    torch.testing.assert_close(exact, ref, rtol=2e-2, atol=2e-2)
    assert (rounded - ref).abs().max() > 0.05


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_boxes_cast_to_input_dtype(dtype, layout):
    """float32/float64 input: boxes of any floating dtype are cast to the input dtype."""
    x = in_layout(torch.randn(2, 3, 9, 11, dtype=dtype), layout)
    rois = make_rois(8, 2, 9, 11, torch.float64, seed=12)
    for box_dtype in (torch.bfloat16, torch.float16, torch.float32, torch.float64):
        b = rois.to(box_dtype)
        for fn in FNS:
            assert torch.equal(fn(x, b, 3, 0.5), fn(x, b.to(dtype), 3, 0.5))
        boxes = [b[b[:, 0] == i, 1:] for i in range(2)]
        assert ops.roi_align(x, boxes, 3).dtype == dtype


def test_autocast_bf16(layout):
    """Under CPU autocast the op gets bf16 features (from a conv) and float32 boxes; forward and backward run
    and match float32 math on the same bf16 features."""
    conv = torch.nn.Conv2d(3, 8, 3, padding=1)
    img = in_layout(torch.randn(2, 3, 24, 32), layout)  # a channels_last input gives channels_last features
    rois = make_rois(12, 2, 24 * 8, 32 * 8, torch.float32, seed=13)
    boxes = [rois[rois[:, 0] == i, 1:] for i in range(2)]
    for fn in (
        lambda f: ops.roi_align(f, boxes, 7, 1 / 8, 2, aligned=True),
        lambda f: ops.roi_pool(f, boxes, 7, 1 / 8),
        lambda f: ops.roi_warp(f, boxes, 7, 1 / 8),
    ):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            feat = conv(img)
            assert feat.dtype == torch.bfloat16
            feat.retain_grad()
            out = fn(feat)
            assert out.dtype == torch.bfloat16
            loss = out.float().square().sum()
        loss.backward()
        assert feat.grad is not None and feat.grad.dtype == torch.bfloat16 and torch.isfinite(feat.grad).all()
        ref_feat = feat.detach().float().requires_grad_()
        ref = fn(ref_feat)
        ref.square().sum().backward()
        torch.testing.assert_close(out.float(), ref, rtol=2e-2, atol=2e-2)
        torch.testing.assert_close(feat.grad.float(), ref_feat.grad, rtol=5e-2, atol=5e-2)
        conv.zero_grad()


def test_large_outputs_huge_page_buffers(layout):
    """Outputs / gradients >= 4 MiB come from the huge-page allocator (recycled); they behave like any tensor."""
    x = in_layout(torch.randn(2, 256, 64, 64), layout)  # grad_input 8 MiB
    rois = make_rois(48, 2, 64, 64, torch.float32, seed=14)  # output 48 * 256 * 14 * 14 * 4 B = 9.6 MB
    ours = run(ops.roi_pool, x, rois, 14)
    ref = run(torchvision.ops.roi_pool, x, rois, 14)
    assert torch.equal(ours[0], ref[0]) and torch.equal(ours[1], ref[1])
    out = ops.roi_align(x, rois, 14, 1.0, 2, True)
    torch.testing.assert_close(out, torchvision.ops.roi_align(x, rois, 14, 1.0, 2, True), rtol=1e-5, atol=1e-5)
    out.resize_(2 * out.numel())  # resizable storage (a regular allocator)
    out.fill_(1.0)
    assert out.sum().item() == out.numel()


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("op,mode,aligned", CASES)
def test_memory_layouts_and_routes_agree_bitwise(op, mode, aligned, dtype, monkeypatch):
    """Every route adds the same terms in the same order: bitwise equal outputs and gradients, for any layout.
    C = 37 fills vectors of any width and leaves a partial one; gradients come back in the input's layout."""
    x = torch.randn(2, 37, 9, 11).to(dtype)
    rois = make_rois(24, 2, 9, 11, torch.float32, seed=8)

    def f(t):
        return call(op, mode, aligned, "ours", t, rois, 3, 0.5, 0)

    monkeypatch.setenv("ROI_OPS_NCHW_KERNEL", "planes")
    base = run(f, x)
    assert base[1].is_contiguous()
    layouts = [
        x.contiguous(memory_format=torch.channels_last),
        x.transpose(2, 3).contiguous().transpose(2, 3),
        x.permute(1, 0, 2, 3).contiguous().permute(1, 0, 2, 3),
    ]
    for v in layouts:
        assert not v.is_contiguous()
        out, grad = run(f, v)
        assert torch.equal(out, base[0]) and torch.equal(grad, base[1])
        cl = torch.channels_last
        assert grad.is_contiguous(memory_format=cl) == v.is_contiguous(memory_format=cl)  # the input's layout
    monkeypatch.setenv("ROI_OPS_NCHW_KERNEL", "blocked")
    out, grad = run(f, x)
    assert torch.equal(out, base[0]) and torch.equal(grad, base[1]) and grad.is_contiguous()


# ---------------------------------------------------------------------------------------------------
# Bad input and edge cases
X = torch.randn(2, 3, 8, 8)
FNS = [ops.roi_align, ops.roi_pool, ops.roi_warp]


@pytest.mark.parametrize("fn", FNS)
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_box_names_row(fn, bad, layout):
    rois = torch.tensor([[0.0, 1, 1, 4, 4], [1.0, 1, 1, 4, 4], [1.0, 1, 1, 4, 4]])
    rois[2, 3] = bad
    with pytest.raises(ValueError, match="row 2"):
        fn(in_layout(X, layout), rois, 2)


@pytest.mark.parametrize("fn", FNS)
@pytest.mark.parametrize("batch", [-1.0, 2.0, 0.5, float("nan")])
def test_bad_batch_index_names_row(fn, batch, layout):
    x = in_layout(X, layout)
    rois = torch.tensor([[0.0, 1, 1, 4, 4], [batch, 1, 1, 4, 4]])
    with pytest.raises(ValueError, match="row 1"):
        fn(x, rois, 2)
    with pytest.raises(ValueError, match="row 2"):
        fn(x, [torch.ones(1, 4), torch.ones(1, 4), torch.ones(1, 4)], 2)  # 3 images of boxes for N=2


@pytest.mark.parametrize("fn", FNS)
def test_bad_arguments(fn, layout):
    good = torch.tensor([[0.0, 1, 1, 4, 4]])
    x = in_layout(X, layout)
    with pytest.raises(ValueError, match=r"Tensor\[K, 5\]"):
        fn(x, torch.ones(3, 4), 2)
    with pytest.raises(ValueError, match=r"boxes\[0\]"):
        fn(x, [torch.ones(3, 5)], 2)
    with pytest.raises(TypeError, match="floating point"):
        fn(x, good.long(), 2)
    with pytest.raises(TypeError, match="floating point"):
        fn(x, [good[:, 1:].int()], 2)
    with pytest.raises(ValueError, match="device"):
        fn(x, good.to("meta"), 2)
    with pytest.raises(ValueError, match="4-D"):
        fn(x[0], good, 2)
    for size in (0, -1, (2, 0), (1, 2, 3), 1.5, True, "7"):
        with pytest.raises(ValueError, match="output_size"):
            fn(x, good, size)
    with pytest.raises(ValueError, match="spatial_scale"):
        fn(x, good, 2, float("nan"))


def test_bad_pool_mode():
    good = torch.tensor([[0.0, 1, 1, 4, 4]])
    for fn in (ops.roi_align, ops.roi_warp):
        with pytest.raises(ValueError, match="pool_mode"):
            fn(X, good, 2, pool_mode="sum")
    with pytest.raises(ValueError, match="pool_mode"):
        ops.RoIAlign(2, pool_mode="min")


def test_direct_op_calls_check_shapes(layout):
    """torch.ops calls bypass the Python validation; the C++ checks must raise, never crash."""
    x = in_layout(X, layout)
    r = torch.tensor([[0.0, 1, 1, 4, 4]])
    am = torch.zeros((1, 3, 2, 2), dtype=torch.int32)
    with pytest.raises(RuntimeError, match="rois must be"):
        raw_forward(x, r[:, :4], "align", 1.0, 2, 2)
    # rois: the input dtype or its coordinate dtype (float32 for half/bf16), nothing else
    with pytest.raises(RuntimeError, match="rois must have the dtype"):
        raw_forward(x, r.double(), "pool", 1.0, 2, 2)
    with pytest.raises(RuntimeError, match="rois must have the dtype"):
        raw_forward(x.bfloat16(), r.half(), "align", 1.0, 2, 2)
    with pytest.raises(RuntimeError, match="rois must have the dtype"):
        raw_backward(torch.ones(1, 3, 2, 2), r.double(), am, "pool", 1.0, 2, 3, 8, 8, layout=layout)
    with pytest.raises(RuntimeError, match="batch index"):
        raw_forward(x, torch.tensor([[5.0, 1, 1, 4, 4]]), "pool", 1.0, 2, 2)
    with pytest.raises(RuntimeError, match="batch index"):
        raw_forward(x, torch.tensor([[float("nan"), 1, 1, 4, 4]]), "warp", 1.0, 2, 2, 2)
    with pytest.raises(RuntimeError, match="grad must be"):
        raw_backward(torch.ones(1, 3, 3, 3), r, am, "align", 1.0, 2, 3, 8, 8, max_mode=False, layout=layout)
    with pytest.raises(RuntimeError, match="argmax"):
        raw_backward(torch.ones(1, 3, 2, 2), r, am.fill_(999), "pool", 1.0, 2, 3, 8, 8, layout=layout)
    with pytest.raises(RuntimeError, match="argmax"):
        raw_backward(torch.ones(1, 3, 2, 2), r, am.fill_(99), "align", 1.0, 2, 3, 8, 8, 2, False, True, layout=layout)
    with pytest.raises(RuntimeError, match="kind must be"):
        raw_forward(x, r, "bilinear", 1.0, 2, 2)
    with pytest.raises(RuntimeError, match="levels may be None only with one feature map"):
        torch.ops.roi_ops.multilevel_roi_forward([x, x], r, None, [1.0, 0.5], "align", 2, 2, 2, True, False)
    # NaN coordinates through the raw op: finite output, no crash
    nan_box = torch.tensor([[0.0, float("nan"), 1, 4, float("nan")]])
    for out in (raw_forward(x, nan_box, "align", 1.0, 2, 2)[0], raw_forward(x, nan_box, "pool", 1.0, 2, 2)[0]):
        assert torch.isfinite(out).all()


@pytest.mark.parametrize("fn", FNS)
def test_empty_boxes(fn, layout):
    x = in_layout(X, layout).requires_grad_()
    for boxes in (torch.zeros(0, 5), [torch.zeros(0, 4), torch.zeros(0, 4)]):
        out = fn(x, boxes, (2, 3))
        assert out.shape == (0, 3, 2, 3)
        (g,) = torch.autograd.grad(out.sum(), x)
        assert torch.equal(g, torch.zeros_like(x))


@pytest.mark.parametrize("op,mode,aligned", CASES)
def test_huge_and_inverted_boxes_are_finite(op, mode, aligned, layout):
    rois = torch.tensor(
        [
            [0, 1e30, 1e30, 2e30, 2e30],
            [0, -1e30, -1e30, 1e30, 1e30],
            [1, 7, 7, 1, 1],
            [1, 3, 2, 3, 2],
            [0, -3e38, 0, 3e38, 5],
        ]
    )
    x = in_layout(X, layout).requires_grad_()
    for sr in (0, 2):
        out = call(op, mode, aligned, "ours", x, rois, 3, 1.0, sr)
        (g,) = torch.autograd.grad(out.sum(), x)
        assert torch.isfinite(out).all() and torch.isfinite(g).all()


def test_modules(layout):
    x = in_layout(torch.randn(1, 2, 8, 8), layout)
    boxes = [torch.tensor([[1.0, 1, 6, 5]])]
    m = ops.RoIAlign((2, 3), 0.5, 2, aligned=True)
    assert torch.equal(m(x, boxes), ops.roi_align(x, boxes, (2, 3), 0.5, 2, True))
    assert "output_size=(2, 3)" in repr(m) and "aligned=True" in repr(m)
    p = ops.RoIPool(3, 0.5)
    assert torch.equal(p(x, boxes), ops.roi_pool(x, boxes, 3, 0.5)) and "spatial_scale=0.5" in repr(p)
    w = ops.RoIWarp(4, 1.0, 2, "avg")
    assert torch.equal(w(x, boxes), ops.roi_warp(x, boxes, 4, 1.0, 2, "avg")) and "'avg'" in repr(w)
