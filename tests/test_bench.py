"""The benchmark scripts run on the CPU at a small size and report what they claim to measure."""

import json

import pytest
import torch

from bench import multilevel, roi_ops, train_step


@pytest.mark.slow
def test_train_step_bench_compares_the_same_work(tmp_path):
    out = tmp_path / "train_step.json"
    report = train_step.main(
        [
            "--device",
            "cpu",
            "--batch",
            "1",
            "--size",
            "96",
            "96",
            "--steps",
            "1",
            "--warmup",
            "0",
            "--precision",
            "fp32",
            "--out",
            str(out),
        ]
    )
    assert json.loads(out.read_text()) == report
    ours, torchvision = report["results"]
    assert (ours["impl"], torchvision["impl"]) == ("ours", "torchvision")
    for result in (ours, torchvision):
        assert result["images_per_second"] > 0
        assert set(result["breakdown"]) == {
            "data",
            "transform",
            "backbone",
            "rpn",
            "roi_heads",
            "backward",
            "optimizer",
        }
        assert 0.5 < sum(result["breakdown"].values()) <= 1.004, "sections cover the step (7 shares rounded to 1e-3)"
        assert 0 < result["roi_ops_share"] < 1
    # Each side really runs its own RoI op, forward and backward.
    assert any(k.startswith("roi_ops::multilevel_roi_backward") for k in ours["roi_op_kernels"])
    assert not any("torchvision" in k for k in ours["roi_op_kernels"])
    assert any(k.startswith("torchvision::_roi_align_backward") for k in torchvision["roi_op_kernels"])


def test_synthetic_targets_look_like_coco():
    images, targets = train_step.synthetic_batch(4, (64, 96))
    assert [tuple(i.shape) for i in images] == [(3, 64, 96)] * 4
    for target in targets:
        n = len(target["boxes"])
        assert n >= 1 and target["masks"].shape == (n, 64, 96) and target["labels"].min() >= 1
        boxes = target["boxes"]
        assert (boxes[:, 2] > boxes[:, 0]).all() and (boxes[:, 3] > boxes[:, 1]).all()
        assert (boxes[:, 2] <= 96).all() and (boxes[:, 3] <= 64).all()
        assert (target["masks"].flatten(1).sum(1) > 0).all(), "every instance has mask pixels"


def test_roi_ops_bench_fused_and_per_level_calls_do_the_same_work():
    """The fused row times one multilevel_roi call over the same rois the per-level rows pool level by level."""
    device = torch.device("cpu")
    feats, per_level, rois, levels = roi_ops.make_workload(device, torch.float32, channels=4, rois_per_image=64)
    assert [int(r.shape[0]) for r in per_level] == torch.bincount(levels, minlength=4).tolist()
    for name, _size, ours, tv, fused in roi_ops.cases():
        (fused_out,) = fused(feats, rois, levels)
        by_level = roi_ops.per_level_calls(ours, feats, per_level)
        regrouped = torch.cat([fused_out[levels == i] for i in range(len(by_level))])
        assert torch.equal(regrouped, torch.cat(by_level)), name
        torch.testing.assert_close(torch.cat(roi_ops.per_level_calls(tv, feats, per_level)), regrouped)
        fwd_ms, fwd_bwd_ms = roi_ops.measure(lambda fs, fn=fused: fn(fs, rois, levels), feats, device, 1)
        assert fwd_ms > 0 and fwd_bwd_ms > 0
    assert roi_ops.copy_bandwidth(device, 1, mib=8) > 0
    fwd_bytes, fwd_bwd_bytes = roi_ops.compulsory_bytes(feats, rois, 7)
    assert fwd_bytes == sum(f.numel() * 4 for f in feats) + rois.shape[0] * 4 * 49 * 4
    assert fwd_bwd_bytes == 2 * fwd_bytes


def test_multilevel_bench_times_three_ways_of_the_same_work(tmp_path):
    feats, per_level, rois, levels = roi_ops.make_workload(torch.device("cpu"), torch.float32, 4, 1, 48)
    outs = {name: way(feats, rois, levels, per_level, 7) for name, way in multilevel.WAYS.items()}
    (fused,), (grouped,) = outs["fused"], outs["grouped"]
    assert torch.equal(fused, grouped)
    assert torch.equal(torch.cat([fused[levels == i] for i in range(4)]), torch.cat(outs["per_level"]))
    rows = multilevel.run(torch.device("cpu"), 1, channels=4, images=1, rois_per_image=48)
    assert [row["output"] for row in rows] == ["7x7", "14x14"]
    assert all(v > 0 for row in rows for k, v in row.items() if k.endswith("_ms"))


def test_demo_summary_gathers_the_run_its_step_times_evaluation_and_predictions(tmp_path):
    """bench/demo_summary.py, as gpu_session.sh's demo step calls it, on a run dir with known step times."""
    from torch.utils.tensorboard import SummaryWriter

    from bench import demo_summary

    (tmp_path / "train").mkdir()
    (tmp_path / "evaluate").mkdir()
    (tmp_path / "predict").mkdir()
    metrics = {"segm/AP": 0.5, "bbox/AP": 0.4, "steps": 4, "train_minutes": 0.1, "validations": [{"step": 4}]}
    (tmp_path / "train" / "metrics.json").write_text(json.dumps(metrics))
    (tmp_path / "evaluate" / "metrics.json").write_text(json.dumps({"segm/AP": 0.5, "bbox/AP": 0.4, "roi": "x"}))
    (tmp_path / "predict" / "summary.json").write_text(json.dumps({"images": 4, "detections": 7}))
    with SummaryWriter(str(tmp_path / "train" / "tensorboard")) as writer:
        for step, wall in enumerate([100.0, 100.5, 101.0, 101.5, 109.5, 110.0]):  # 8 s: a validation
            writer.add_scalar("train/loss", 1.0, step, walltime=wall)
    summary = demo_summary.main([str(tmp_path), "--out", str(tmp_path / "demo.json")])
    assert json.loads((tmp_path / "demo.json").read_text()) == summary
    assert summary["step_times"]["steps"] == 6 and summary["step_times"]["median_s"] == pytest.approx(0.5)
    assert summary["evaluate"] == {"segm/AP": 0.5, "bbox/AP": 0.4} and summary["predict"]["detections"] == 7
    assert summary["validations"] == [{"step": 4}] and "validations" not in summary["train"]
