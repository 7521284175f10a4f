"""The CUDA path's code, run on the CPU, against the CPU kernels.

``torch.ops.roi_ops_emulated`` is the schema pair of ``roi_ops`` implemented by the CUDA entry points' host driver
and the CUDA kernels' item functions, run serially (ops/csrc/emulation/roi_ops_emulated.cpp). So these tests run
the GPU kernel bodies: index decoding of every layout, the map table and level lookup, the transposed
grad/argmax layouts, the deterministic ownership partition with its sort/searchsorted bounds, the prefilters,
and all the backward weight distributions.

Both sides round alike (no FMA contraction on either), so the max modes and RoIPool must agree bitwise, forward
(output and argmax) and backward (the serial emulation adds each pixel's terms in the CPU's order). The avg
modes sum in another order (separable weights) and agree to rounding.

Shapes: N images, C channels, L levels of H_l x W_l, K RoIs, output ph x pw.
"""

from __future__ import annotations

import pytest
import torch

import ops
from ops.build import load_emulation
from ops.reference import roi_align_ref, roi_pool_ref, roi_warp_ref
from tests.conftest import deterministic_algorithms

pytestmark = pytest.mark.usefixtures("all_cores")

ops.load()  # torch.ops.roi_ops is called directly below
load_emulation()
CPU = torch.ops.roi_ops
EMU = torch.ops.roi_ops_emulated

SHAPES = [(21, 27), (11, 14), (6, 7), (3, 4), (2, 2)]  # strides 4 .. 64 of an 84 x 108 image; W % 4 != 0
SCALES = [1 / 4, 1 / 8, 1 / 16, 1 / 32, 1 / 64]
POOLED = (5, 4)
# (kind, sampling_ratio, aligned, max_mode)
CASES = [
    ("align", 2, True, False),
    ("align", -1, False, False),
    ("align", -1, True, True),
    ("warp", 2, True, True),
    ("warp", -1, True, False),
    ("pool", 0, True, True),
]
CASE_IDS = [f"{k}-sr{sr}-{'aligned' if al else 'legacy'}-{'max' if mx else 'avg'}" for k, sr, al, mx in CASES]
# layout -> channels: C % 16-byte vector width != 0 takes the scalar NHWC path, == 0 the vectorised one.
LAYOUTS = {"nchw": 5, "strided": 5, "nhwc": 6, "nhwc_vec": 8, "nhwc_misaligned": 8}
TOL = {torch.float64: 1e-12, torch.float32: 2e-5, torch.float16: 2e-3, torch.bfloat16: 2e-2}


def in_layout(x: torch.Tensor, layout: str) -> torch.Tensor:
    """The same values as ``x`` [N, C, H, W], stored in ``layout``."""
    if layout == "strided":  # neither contiguous nor channels_last: the driver makes it contiguous
        wide = torch.zeros(x.shape[0], 2 * x.shape[1], *x.shape[2:], dtype=x.dtype)
        wide[:, ::2] = x
        return wide[:, ::2]
    if layout == "nhwc_misaligned":  # channels_last one element off 16-byte alignment: the vector-load gate
        n, c, h, w = x.shape
        flat = torch.empty(x.numel() + 1, dtype=x.dtype)[1:]
        y = flat.as_strided(x.shape, (h * w * c, 1, w * c, c))
        y.copy_(x)
        assert y.is_contiguous(memory_format=torch.channels_last) and y.data_ptr() % 16 != 0
        return y
    return x.contiguous(memory_format=torch.channels_last) if layout.startswith("nhwc") else x.contiguous()


def make_case(L, C, dtype=torch.float32, K=24, seed=0):
    """Pyramid of L maps, rois [K, 5] in image coordinates (partly outside, tiny, inverted) and levels [K] (None
    for one map)."""
    g = torch.Generator().manual_seed(seed)
    features = [torch.randn(2, C, h, w, generator=g, dtype=torch.float64).to(dtype) for h, w in SHAPES[:L]]
    xy = torch.rand(K, 2, generator=g, dtype=torch.float64) * torch.tensor([130.0, 100.0]) - 12
    wh = torch.rand(K, 2, generator=g, dtype=torch.float64) * 90
    wh[::7] *= 0.01  # tiny
    wh[3::7] *= -0.3  # inverted
    batch = torch.randint(0, 2, (K, 1), generator=g).double()
    rois = torch.cat([batch, xy, xy + wh], 1).to(torch.float64 if dtype == torch.float64 else torch.float32)
    levels = torch.randint(0, L, (K,), generator=g) if L > 1 else None
    return features, rois, levels


def upstream(shape, dtype, seed=1):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64).to(dtype)


def forward(lib, features, rois, levels, case):
    kind, sr, aligned, max_mode = case
    return lib.multilevel_roi_forward(features, rois, levels, SCALES[: len(features)], kind, *POOLED, sr, aligned,
                                      max_mode)


def backward(lib, grad, rois, levels, argmax, features, case, deterministic=False):
    kind, sr, aligned, max_mode = case
    heights, widths = [f.shape[2] for f in features], [f.shape[3] for f in features]
    N, C = features[0].shape[:2]
    with deterministic_algorithms(deterministic):
        return lib.multilevel_roi_backward(grad, rois, levels, argmax, SCALES[: len(features)], kind, *POOLED, N, C,
                                           heights, widths, sr, aligned, max_mode)


def assert_agree(got, ref, case, dtype):
    """Max modes and RoIPool bitwise; the avg modes to the rounding of another summation order."""
    if case[3]:
        assert torch.equal(got, ref), f"{int((got != ref).sum())} of {got.numel()} elements differ"
    else:
        torch.testing.assert_close(got, ref, rtol=TOL[dtype], atol=TOL[dtype])


def check_against_cpu(features, rois, levels, case, dtype, emu_features=None):
    """Forward, then both backward modes, of the emulation against the CPU kernels."""
    out, argmax = forward(CPU, features, rois, levels, case)
    emu_out, emu_argmax = forward(EMU, emu_features or features, rois, levels, case)
    assert_agree(emu_out, out, case, dtype)
    assert torch.equal(emu_argmax, argmax)
    grad = upstream(out.shape, dtype)
    grads = backward(CPU, grad, rois, levels, argmax, features, case)
    for deterministic in (False, True):
        emu_grads = backward(EMU, grad, rois, levels, argmax, features, case, deterministic)
        assert len(emu_grads) == len(grads)
        for emu_grad, ref in zip(emu_grads, grads, strict=True):
            assert_agree(emu_grad, ref, case, dtype)


@pytest.mark.parametrize("L", [1, 2, 3, 4, 5])
@pytest.mark.parametrize("layout", list(LAYOUTS))
@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_emulated_cuda_path_matches_cpu(case, layout, L):
    features, rois, levels = make_case(L, LAYOUTS[layout])
    check_against_cpu(features, rois, levels, case, torch.float32, [in_layout(f, layout) for f in features])


@pytest.mark.parametrize("layout", ["nchw", "nhwc_vec"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_emulated_cuda_path_matches_cpu_other_dtypes(case, dtype, layout):
    """Each dtype has its own vector width (2 double, 8 half/bfloat16) and accumulates in its opmath type."""
    features, rois, levels = make_case(3, 16, dtype, seed=2)
    check_against_cpu(features, rois, levels, case, dtype, [in_layout(f, layout) for f in features])


@pytest.mark.parametrize("case", [c for c in CASES if c[0] != "pool"], ids=CASE_IDS[:-1])
def test_wide_bins_take_the_per_sample_atomics(case):
    """Bins wider than kMaxSpan (12) pixels: the separable avg backward falls back to four atomics per sample."""
    features, _, _ = make_case(1, 4)
    # On the 21 x 27 map: x from -10 to 60 px (bins of 17.5 px), y from -15 to 65 px (bins of 16 px).
    rois = torch.tensor([[0, -40.0, -20.0, 240.0, 100.0], [1, 10.0, -60.0, 100.0, 260.0]])
    case = (case[0], 16, *case[2:])  # 16 samples per bin side: about one per pixel
    bin_px = (rois[:, 3:5] - rois[:, 1:3]) * SCALES[0] / torch.tensor(POOLED[::-1])
    assert (bin_px > 12).any(dim=1).all()
    check_against_cpu(features, rois, None, case, torch.float32)


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_bad_batch_index_and_level_without_validation(case):
    """What validate=False lets reach the GPU: a RoI with a batch index outside [0, N) (or NaN) or a level outside
    [0, L) outputs 0 (argmax -1) and receives no gradient, in both backward modes; the others are unaffected."""
    features, rois, levels = make_case(3, 4, K=20, seed=4)
    rois[:3, 0] = torch.tensor([-1.0, 2.0, float("nan")])
    levels[3:5] = torch.tensor([-1, 3])
    good = torch.ones(rois.shape[0], dtype=torch.bool)
    good[:5] = False
    out, argmax = forward(EMU, features, rois, levels, case)
    ref_out, ref_argmax = forward(CPU, features, rois[good], levels[good], case)
    assert torch.equal(out[~good], torch.zeros_like(out[~good]))
    assert_agree(out[good], ref_out, case, torch.float32)
    if case[3]:
        assert torch.equal(argmax[~good], torch.full_like(argmax[~good], -1))
        assert torch.equal(argmax[good], ref_argmax)
    grad = upstream(out.shape, torch.float32)
    ref_grads = backward(CPU, grad[good], rois[good], levels[good], ref_argmax, features, case)
    for deterministic in (False, True):
        grads = backward(EMU, grad, rois, levels, argmax, features, case, deterministic)
        for got, ref in zip(grads, ref_grads, strict=True):
            assert_agree(got, ref, case, torch.float32)


def reference_grad(x, rois, grad, case):
    """Gradient of the float64 reference (autograd through its bilinear formula) for one map [N, C, H, W]."""
    kind, sr, aligned, max_mode = case
    x = x.double().requires_grad_()
    mode = "max" if max_mode else "avg"
    if kind == "align":
        out = roi_align_ref(x, rois.double(), POOLED, SCALES[0], sr, aligned, mode)
    elif kind == "warp":
        out = roi_warp_ref(x, rois.double(), POOLED, SCALES[0], sr, mode)
    else:
        out = roi_pool_ref(x, rois.double(), POOLED, SCALES[0])
    (g,) = torch.autograd.grad(out, x, grad.double())
    return g


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_non_finite_upstream_gradient(case):
    """inf / -inf / NaN in the output gradient: every path adds g * w for every neighbour of every sample, zero
    weights included, like autograd through the float64 reference (and torchvision): inf * 0 is NaN. So the
    default GPU path, the deterministic one and the CPU kernels give the same non-finite pattern."""
    features, rois, _ = make_case(1, 3, seed=5)
    # One sample per bin at the bin centre: on a pixel exactly (zero-weight neighbours) in the first RoI
    # (2 x 2 pixel bins from map (1, 1)), and snapped to the last row / column (coinciding neighbours) in the
    # second, which sticks out of the 21 x 27 map.
    rois[:2] = torch.tensor([[0, 4.0, 4.0, 36.0, 44.0], [1, 60.0, 40.0, 120.0, 100.0]])
    case = (case[0], 0 if case[0] == "pool" else 1, False, case[3])
    out, argmax = forward(CPU, features, rois, None, case)
    grad = upstream(out.shape, torch.float32)
    flat = grad.view(-1)
    flat[::7], flat[3::11], flat[5] = float("inf"), float("-inf"), float("nan")
    (ref,) = backward(CPU, grad, rois, None, argmax, features, case)
    exact = reference_grad(features[0], rois, grad, case)
    assert ref.isnan().any() and ref.isinf().any()
    torch.testing.assert_close(ref.double(), exact, rtol=1e-5, atol=1e-5, equal_nan=True)
    for deterministic in (False, True):
        (got,) = backward(EMU, grad, rois, None, argmax, features, case, deterministic)
        torch.testing.assert_close(got, ref, rtol=TOL[torch.float32], atol=TOL[torch.float32], equal_nan=True)


def test_empty_rois_and_channels():
    features, rois, levels = make_case(2, 4)
    for feats, r, lv in ((features, rois[:0], levels[:0]), ([f[:, :0] for f in features], rois, levels)):
        out, argmax = forward(EMU, feats, r, lv, CASES[2])
        assert out.shape == (r.shape[0], feats[0].shape[1], *POOLED) and argmax.shape == out.shape
        grads = backward(EMU, torch.ones_like(out), r, lv, argmax, feats, CASES[2], deterministic=True)
        assert [g.shape for g in grads] == [f.shape for f in feats] and not any(g.any() for g in grads)


def test_emulation_checks_arguments_like_the_cuda_entry_points():
    features, rois, levels = make_case(2, 4)
    with pytest.raises(RuntimeError, match="levels must be an int64"):
        forward(EMU, features, rois, levels.int(), CASES[0])
    with pytest.raises(RuntimeError, match="supports 1 to 8 feature maps"):
        EMU.multilevel_roi_forward(features * 5, rois, levels, [0.25] * 10, "align", 2, 2, 2, True, False)
    with pytest.raises(RuntimeError, match="argmax must have the shape"):
        backward(EMU, torch.ones(24, 4, *POOLED), rois, levels, torch.zeros(1, dtype=torch.int32), features, CASES[2])
