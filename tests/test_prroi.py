"""examples/prroi_pool: Precise RoI Pooling against independent references (integrals done by hand, the limit of
dense RoIAlign, finite differences), and trained through the plug-in path exactly as a user's extractor is."""

import importlib.util
from pathlib import Path

import pytest
import torch

import ops

pytestmark = pytest.mark.usefixtures("all_cores")

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "prroi_pool"
_spec = importlib.util.spec_from_file_location("prroi_pool_example", EXAMPLE / "prroi_pool.py")
prroi = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(prroi)


def _rois(*rows, dtype=torch.float64):
    return torch.tensor(rows, dtype=dtype)


def test_a_constant_map_gives_the_constant_inside_the_map():
    feature = torch.full((2, 3, 20, 24), 2.5)
    rois = _rois([0, 4.0, 4.0, 30.0, 25.0], [1, 10.3, 2.2, 11.1, 3.9], [1, 2.0, 2.0, 2.0, 2.0], dtype=torch.float32)
    out = prroi.prroi_pool(feature, rois, 7, 0.5)
    torch.testing.assert_close(out, torch.full_like(out, 2.5), rtol=0, atol=1e-6)


def test_a_linear_ramp_gives_its_value_at_each_bin_centre():
    """The mean of a linear function over an interval is its value at the midpoint: exact, for any bin size."""
    height, width = 32, 40
    y, x = torch.meshgrid(torch.arange(height, dtype=torch.float64), torch.arange(width, dtype=torch.float64),
                          indexing="ij")  # fmt: skip
    feature = torch.stack([3 * x - 2 * y + 1, x + 0 * y])[None]  # [1, 2, H, W]
    rois = _rois([0, 5.0, 6.0, 40.0, 50.0], [0, 11.2, 13.7, 12.9, 14.1], [0, 3.3, 4.4, 70.0, 60.0])
    scale = 0.5
    out = prroi.prroi_pool(feature, rois, 5, scale)  # aligned: map coordinate = c * scale - 0.5
    for r, (_, x1, y1, x2, y2) in enumerate(rois.tolist()):
        frac = (torch.arange(5, dtype=torch.float64) + 0.5) / 5
        cx = x1 * scale - 0.5 + frac * (x2 - x1) * scale
        cy = y1 * scale - 0.5 + frac * (y2 - y1) * scale
        torch.testing.assert_close(out[r, 0], 3 * cx[None, :] - 2 * cy[:, None] + 1, rtol=0, atol=1e-12)
        torch.testing.assert_close(out[r, 1], cx[None, :].expand(5, 5), rtol=0, atol=1e-12)


def test_aligned_false_is_unshifted_with_rois_at_least_one_cell():
    x = torch.arange(16, dtype=torch.float64)
    feature = (x + 0 * x[:, None])[None, None]
    out = prroi.prroi_pool(feature, _rois([0, 4.0, 4.0, 4.5, 4.5]), 1, 1.0, aligned=False)
    assert out.item() == pytest.approx(4.5, abs=1e-12), "[4, 4.5] clamped to [4, 5]: the ramp's mean is 4.5"


def test_it_is_the_limit_of_dense_aligned_roialign_inside_the_map():
    torch.manual_seed(0)
    feature = torch.randn(2, 4, 24, 28, dtype=torch.float64)
    rois = _rois([0, 3.0, 4.0, 30.0, 40.0], [1, 10.0, 12.0, 20.0, 16.0], [0, 2.5, 2.5, 50.0, 44.0],
                 [1, 20.0, 7.0, 21.0, 8.0])  # fmt: skip
    exact = prroi.prroi_pool(feature, rois, 7, 0.5)
    sampled = ops.roi_align(feature, rois, 7, 0.5, 64, True)
    assert ((exact - sampled).abs().max() / exact.abs().max()).item() < 1e-3


def test_outside_the_map_it_fades_to_zero_where_roialign_holds_the_border():
    """A RoI over map columns [7.5, 8.5] of an 8-wide map of ones (rows inside)."""
    feature = torch.ones(1, 1, 8, 8, dtype=torch.float64)
    rois = _rois([0, 8.0, 1.0, 9.0, 7.0])  # aligned: map x = image x - 0.5
    out = prroi.prroi_pool(feature, rois, 1, 1.0)
    assert out.item() == pytest.approx(0.125, abs=1e-12), "column 7's hat over [7.5, 8.5]: mean of 1 - t on [1/2, 1]"
    # RoIAlign's samples at x = 7.75 (snapped to the last column: 1) and 8.25 (past W: 0)
    assert ops.roi_align(feature, rois, 1, 1.0, 2, True).item() == pytest.approx(0.5)


@pytest.mark.parametrize("aligned", [True, False])
def test_gradients_match_finite_differences_for_features_and_boxes(aligned):
    torch.manual_seed(1)
    feature = torch.randn(2, 2, 10, 12, dtype=torch.float64, requires_grad=True)
    # Integer coordinates included: with aligned=True, 3.0 * 0.5 - 0.5 = 1.0 lands a box edge on a cell centre.
    boxes = _rois([3.0, 4.0, 19.0, 15.0], [2.25, 1.5, 9.75, 20.0], [10.0, 2.0, 13.0, 5.0]).requires_grad_()
    index = torch.tensor([[0.0], [1.0], [0.0]], dtype=torch.float64)

    def pooled(f, b):
        return prroi.prroi_pool(f, torch.cat([index, b], dim=1), 3, 0.5, aligned)

    assert torch.autograd.gradcheck(pooled, (feature, boxes))


def test_an_empty_set_of_rois_gives_an_empty_output():
    out = prroi.prroi_pool(torch.randn(1, 3, 8, 8), torch.zeros(0, 5), 7, 0.25)
    assert out.shape == (0, 3, 7, 7)


def test_prroi_and_align_adaptive_complete_a_smoke_run(compose_cfg, tmp_path):
    """The bar: `roi=prroi` from examples/ (through hydra.searchpath, as a user's) and `roi=align_adaptive`."""
    from maskrcnn.training import train

    for roi, extra in (("prroi", [f"hydra.searchpath=[file://{EXAMPLE}]"]), ("align_adaptive", [])):
        cfg = compose_cfg("train", ["experiment=smoke", f"roi={roi}", f"paths.data_dir={tmp_path / 'data'}",
                                    f"paths.output_dir={tmp_path / roi}", "trainer.max_steps=2",
                                    "trainer.val_check_interval=2", "train.vis_images=0", *extra])  # fmt: skip
        metrics = train(cfg)
        assert metrics["roi"] == roi and metrics["steps"] == 2
