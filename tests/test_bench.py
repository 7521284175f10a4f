"""The benchmark scripts run on the CPU at a small size and report what they claim to measure."""

import json

import pytest

from bench import train_step


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
    assert any(k.startswith("roi_ops::roi_align_backward") for k in ours["roi_op_kernels"])
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
