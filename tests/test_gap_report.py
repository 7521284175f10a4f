"""maskrcnn.analysis.gap_report: the paper-style table over runs' metrics.json files."""

import json

import pytest

from maskrcnn.analysis import gap_report

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
