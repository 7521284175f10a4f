"""maskrcnn.analysis.sampling_figure: the drawn RoI geometry is the ops' geometry."""

import torch

import ops
from maskrcnn.analysis import misalignment_probe, sampling_figure
from ops.reference import round_half_away


def test_geometry_plot_writes_a_png(tmp_path):
    out = tmp_path / "grid.png"
    sampling_figure.main(["--box", "37", "21", "190", "133", "--stride", "32", "--out", str(out)])
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 20_000


def test_geometry_helpers_match_roipool_rounding():
    assert round_half_away(2.5) == 3 and round_half_away(-2.5) == -3
    geo = sampling_figure.pool_geometry((37, 21, 190, 133), 32, 4)
    assert geo.box == (32, 32, 224, 160)  # cells round(1.16)=1 .. round(5.94)=6 (+1), round(0.66)=1 .. 4 (+1)
    assert geo.x_bins[0] == (1, 3) and geo.x_bins[-1] == (5, 7)  # floor/ceil of 6/4 cells: overlapping bins


def test_drawn_warp_and_align_samples_are_where_the_ops_sample():
    """The mean of the drawn sample points of each bin equals the avg op's output on a coordinate map."""
    roi, stride, size = (37.0, 21.0, 190.0, 133.0), 32, 7
    features = misalignment_probe.coordinate_features(512, stride)
    rois = torch.tensor([[0.0, *roi]])
    outputs = {
        "warp": ops.roi_warp(features, rois, size, 1 / stride, 2, pool_mode="avg"),
        "align": ops.roi_align(features, rois, size, 1 / stride, 2, aligned=True),
    }
    boxes = {"warp": sampling_figure.warp_box(roi, stride), "align": sampling_figure.align_box(roi, stride)}
    for name, out in outputs.items():
        points = torch.tensor(sampling_figure.sample_points(boxes[name], stride, size, 2))  # [P, S, 2]
        drawn = points.mean(1).reshape(size, size, 2)
        torch.testing.assert_close(out[0, 0], drawn[..., 0].float(), atol=1e-3, rtol=0)
        torch.testing.assert_close(out[0, 2], drawn[..., 1].float(), atol=1e-3, rtol=0)
