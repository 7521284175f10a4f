"""The gap experiment's tools: the report over metrics.json files, the misalignment probe, the RoI drawing."""

import json

import pytest
import torch

import ops
from maskrcnn import gap_report, misalignment_probe, roi_geometry_plot

KEYS = gap_report.METRICS


def _write_run(root, roi, seed, segm_ap, segm_ap50, segm_ap75, box_ap, model="r18_c5"):
    metrics = {k: 0.1 for k in KEYS}
    metrics.update({"segm/AP": segm_ap, "segm/AP50": segm_ap50, "segm/AP75": segm_ap75, "bbox/AP": box_ap})
    run = root / f"{roi}_s{seed}"
    run.mkdir(parents=True)
    record = {**metrics, "roi": roi, "model": model, "data": "shapes", "seed": seed, "train_minutes": 9.5,
              "device": "CPU test", "steps": 800}
    (run / "metrics.json").write_text(json.dumps(record))


def test_report_means_stds_deltas_and_ratios(tmp_path):
    sweep = tmp_path / "sweep"
    _write_run(sweep, "pool", 0, 0.10, 0.40, 0.10, 0.20)
    _write_run(sweep, "pool", 1, 0.12, 0.44, 0.12, 0.22)
    _write_run(sweep, "align", 0, 0.30, 0.50, 0.30, 0.30)
    _write_run(sweep, "align", 1, 0.34, 0.54, 0.34, 0.32)
    out = tmp_path / "report"
    gap_report.main([str(sweep), "--out", str(out), "--tensorboard", str(tmp_path / "tb")])

    runs = json.loads((out / "roi_gap.json").read_text())
    assert len(runs) == 4 and {r["roi"] for r in runs} == {"pool", "align"}
    assert all(set(KEYS) <= set(r["metrics"]) and r["train_minutes"] == 9.5 for r in runs)
    summary = gap_report.summarize(gap_report.load_runs([sweep]))["r18_c5 / shapes"]
    assert list(summary) == ["pool", "align"], "variants in the paper's order"
    assert summary["align"]["segm/AP"]["mean"] == pytest.approx(32.0)
    assert summary["align"]["segm/AP"]["std"] == pytest.approx(2.8284271, rel=1e-6)
    table = (out / "table.md").read_text()
    assert "| align | 32.0 ± 2.8 | 52.0 ± 2.8 | 32.0 ± 2.8 | 31.0 ± 1.4 | 2 | +21.0 | +21.0 | +10.0 |" in table
    assert "ratio of mask AP75: 2.91, of mask AP50: 1.24" in table
    comparisons = json.loads((out / "summary.json").read_text())["comparisons"]["r18_c5 / shapes"]
    assert comparisons["delta_vs_pool"]["align"]["segm/AP75"] == pytest.approx(21.0)
    assert comparisons["align_over_pool"]["segm/AP75"] == pytest.approx(32.0 / 11.0)
    assert (out / "roi_gap.png").stat().st_size > 10_000
    assert list((tmp_path / "tb").glob("events.out.tfevents.*"))


def test_single_seed_rows_show_no_spread(tmp_path):
    _write_run(tmp_path, "pool", 0, 0.10, 0.40, 0.10, 0.20)
    _write_run(tmp_path, "warp", 0, 0.12, 0.44, 0.12, 0.22)
    table = gap_report.markdown(gap_report.summarize(gap_report.load_runs([tmp_path])))
    assert "| warp | 12.0 | 44.0 | 12.0 | 22.0 | 1 | +2.0 | +2.0 | +2.0 |" in table
    assert "±" not in table


def test_report_names_the_file_with_a_missing_key(tmp_path, capsys):
    _write_run(tmp_path, "pool", 0, 0.1, 0.4, 0.1, 0.2)
    path = tmp_path / "pool_s0" / "metrics.json"
    data = json.loads(path.read_text())
    del data["segm/AP75"]
    path.write_text(json.dumps(data))
    with pytest.raises(gap_report.ReportError, match=r"pool_s0/metrics\.json: missing key\(s\) segm/AP75"):
        gap_report.load_runs([tmp_path])
    with pytest.raises(gap_report.ReportError, match="no metrics.json found under"):
        gap_report.load_runs([tmp_path / "nothing"])


def test_probe_pool_error_grows_with_stride_and_align_stays_exact():
    table = misalignment_probe.probe(64, image_size=512, seed=1)
    assert all(table["align"][s]["mean"] < 0.05 for s in misalignment_probe.STRIDES)
    assert table["pool"][32]["mean"] > 4 * table["pool"][4]["mean"] > 0.5


def test_probe_recovers_a_known_shift():
    """A feature map shifted by half a cell is exactly aligned=False's offset: the probe must report it."""
    rois = misalignment_probe.random_rois(16, 256, margin=32.0, seed=2)
    err = misalignment_probe.bin_errors("align_legacy", 8, rois, 256)
    assert err.mean().item() == pytest.approx(4 * 2**0.5, abs=0.05), "half a stride-8 cell in x and y"
    assert torch.isfinite(err).all()


def test_geometry_plot_writes_a_png(tmp_path):
    out = tmp_path / "grid.png"
    roi_geometry_plot.main(["--box", "37", "21", "190", "133", "--stride", "32", "--out", str(out)])
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 20_000


def test_geometry_helpers_match_roipool_rounding():
    assert roi_geometry_plot.round_half_away(2.5) == 3 and roi_geometry_plot.round_half_away(-2.5) == -3
    geo = roi_geometry_plot.pool_geometry((37, 21, 190, 133), 32, 4)
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
    boxes = {"warp": roi_geometry_plot.warp_box(roi, stride), "align": roi_geometry_plot.align_box(roi, stride)}
    for name, out in outputs.items():
        points = torch.tensor(roi_geometry_plot.sample_points(boxes[name], stride, size, 2))  # [P, S, 2]
        drawn = points.mean(1).reshape(size, size, 2)
        torch.testing.assert_close(out[0, 0], drawn[..., 0].float(), atol=1e-3, rtol=0)
        torch.testing.assert_close(out[0, 2], drawn[..., 1].float(), atol=1e-3, rtol=0)
