"""The benchmark scripts run on the CPU at a small size and report what they claim to measure."""

import json

import pytest
import torch

from bench import multilevel, roi_ops, step_breakdown, step_setup, train_step

# The demo setup shrunk for tests: 4 images of 128 px, batch 1, no loader workers.
TINY_DEMO = ["data.module.shapes.num_train=4", "data.module.shapes.num_val=1", "data.module.shapes.image_size=128",
             "data.module.shapes.max_size=64", "data.image_min_size=128", "data.image_max_size=128",
             "data.module.num_workers=0"]  # fmt: skip
FAST_GEMM = ["--gemm-repeats", "2"]  # the 2048 GEMM: smaller ones suffer more from a busy machine


def assert_breakdown_covers_the_step(result):
    """The breakdown's keys together are the profiled step, and every component got its backward."""
    breakdown = result["breakdown"]
    assert set(breakdown) == {"data", "optimizer", "rest"} | {
        f"{phase}/{c}" for phase in ("forward", "backward") for c in (*step_breakdown.COMPONENTS, "rest")
    }
    assert sum(breakdown.values()) == pytest.approx(1, abs=2e-3), "the shares sum to the step (15 rounded to 1e-4)"
    assert sum(result["components"].values()) == pytest.approx(1, abs=2e-3)
    # 15 parts and the step, each rounded to 1e-4 s: up to 16 x 0.5e-4 apart on a step of any length
    assert sum(result["breakdown_seconds"].values()) == pytest.approx(result["profiled_step_seconds"], abs=8e-4)
    assert all(v >= 0 for k, v in breakdown.items() if not k.endswith("rest")), breakdown
    for component in ("backbone", "rpn", "box"):
        assert breakdown[f"forward/{component}"] > 0 and breakdown[f"backward/{component}"] > 0, component
    assert result["mask_rois_per_image"] > 0, "the ground-truth boxes are sampled as positives"
    assert breakdown["forward/mask"] > 0 and breakdown["backward/mask"] > 0
    # What no component claims stays small: the backward nodes were found by their sequence numbers.
    assert breakdown["backward/rest"] < 0.25 * sum(v for k, v in breakdown.items() if k.startswith("backward/"))


def assert_flop_rates(result):
    flops = result["flops_per_step"]
    assert flops["backward"] > flops["forward"] > 0 and flops["total"] == flops["forward"] + flops["backward"]
    assert result["achieved_flops_per_s"] == pytest.approx(flops["total"] / result["seconds_per_step"], rel=1e-3)
    assert 0 < result["gemm_fraction"] < 1.5


@pytest.mark.slow
def test_train_step_bench_compares_the_same_work(tmp_path):
    out = tmp_path / "train_step.json"
    report = train_step.main(
        ["--device", "cpu", "--batch", "1", "--size", "96", "96", "--steps", "1", "--warmup", "0",
         "--precision", "fp32", "--no-flops", "--out", str(out)]  # fmt: skip
    )
    assert json.loads(out.read_text()) == report
    ours, torchvision = report["results"]
    assert (ours["impl"], torchvision["impl"]) == ("ours", "torchvision")
    for result in (ours, torchvision):
        assert result["images_per_second"] > 0
        assert_breakdown_covers_the_step(result)
        assert "gemm_fraction" not in result  # --no-flops: the demo tests count FLOPs
        assert 0 < result["roi_ops_share"] < 1
    # Each side really runs its own RoI op, forward and backward.
    assert any(k.startswith("roi_ops::multilevel_roi_backward") for k in ours["roi_op_kernels"])
    assert not any("torchvision" in k for k in ours["roi_op_kernels"])
    assert any(k.startswith("torchvision::_roi_align_backward") for k in torchvision["roi_op_kernels"])
    assert report["checkpoint"] is None and report["gemm"] is None and ours["image_ids"] is None  # synthetic batch


@pytest.mark.slow
def test_train_step_bench_demo_starts_both_from_a_checkpoint_and_feeds_both_the_same_batches(tmp_path):
    from maskrcnn.data.shapes import SHAPE_CLASSES
    from maskrcnn.lightning_module import CHECKPOINT_FORMAT
    from maskrcnn.training import build_module

    cfg = step_setup.demo_config([*TINY_DEMO, f"paths.output_dir={tmp_path}", f"paths.data_dir={tmp_path}"])
    torch.manual_seed(1)  # not the benchmark's seed 0: loading must replace its initial weights
    module = build_module(cfg, [{"id": i + 1, "name": name} for i, name in enumerate(SHAPE_CLASSES)])
    ckpt = tmp_path / "trained.ckpt"
    torch.save({"hyper_parameters": dict(module.hparams), "state_dict": module.state_dict(),
                "checkpoint_format": CHECKPOINT_FORMAT, "global_step": 7}, ckpt)  # fmt: skip
    weights, info = step_setup.checkpoint_weights(ckpt, cfg)
    assert weights.keys() == module.model.state_dict().keys()
    assert all(torch.equal(weights[k], v) for k, v in module.model.state_dict().items())
    assert (info["global_step"], info["roi"], info["differs_from_bench"]) == (7, "align", [])

    report = train_step.main(
        ["--device", "cpu", "--setup", "demo", "--ckpt", str(ckpt), "--batch", "1", "--steps", "1", "--warmup", "0",
         *FAST_GEMM, "--out", str(tmp_path / "demo.json"),
         "--override", *TINY_DEMO, f"paths.data_dir={tmp_path}"]  # fmt: skip
    )
    assert report["checkpoint"]["global_step"] == 7 and report["checkpoint"]["path"] == str(ckpt)
    ours, torchvision = report["results"]
    assert ours["image_ids"] == torchvision["image_ids"] and len(ours["image_ids"]) == 3  # FLOP, timed, profiled
    assert [len(ids) for ids in ours["image_ids"]] == [1, 1, 1]
    # Same weights, same batch: the same FLOPs (the mask branch's depend on the positives the weights give).
    assert ours["flops_per_step"] == torchvision["flops_per_step"]
    for result in (ours, torchvision):
        assert_breakdown_covers_the_step(result)
        assert_flop_rates(result)


@pytest.mark.slow
def test_train_step_bench_without_profiled_steps_reports_the_times(tmp_path):
    report = train_step.main(
        ["--device", "cpu", "--setup", "demo", "--impl", "ours", "--batch", "1", "--steps", "1", "--warmup", "0",
         "--profile-steps", "0", *FAST_GEMM, "--out", str(tmp_path / "demo.json"),
         "--override", *TINY_DEMO, f"paths.data_dir={tmp_path}"]  # fmt: skip
    )
    (ours,) = report["results"]
    assert ours["profiled_steps"] == 0 and ours["seconds_per_step"] > 0 and ours["cpu_seconds_per_step"] > 0
    assert "breakdown" not in ours and "roi_ops_share" not in ours
    assert_flop_rates(ours)


def test_synthetic_targets_look_like_coco():
    images, targets = step_setup.synthetic_batch(4, (64, 96))
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


def test_validation_breakdown_scores_as_evaluate_does_and_its_parts_add_up(tmp_path):
    """bench.validation_breakdown on an untrained smoke checkpoint (8 val images of 128 px): the same 12 metrics as
    evaluate.py on that checkpoint (the validation it claims to take apart), no part counted twice (the rests it
    derives stay >= 0), and the backbone's FLOPs equal to FlopCounterMode's count of its forward over the val
    set's batches."""
    from hydra.utils import instantiate
    from torch.utils.flop_counter import FlopCounterMode

    from bench import validation_breakdown
    from maskrcnn.config import compose_config
    from maskrcnn.evaluate_checkpoint import evaluate
    from maskrcnn.lightning_module import CHECKPOINT_FORMAT
    from maskrcnn.training import build_module

    cfg = compose_config("train", ["experiment=smoke", f"paths.output_dir={tmp_path}",
                                   f"paths.data_dir={tmp_path / 'data'}"])  # fmt: skip
    datamodule = instantiate(cfg.data.module)
    datamodule.prepare_data()  # generates the smoke shapes data
    datamodule.setup("fit")
    torch.manual_seed(0)
    module = build_module(cfg, datamodule.classes)
    ckpt = tmp_path / "last.ckpt"
    torch.save({"hyper_parameters": dict(module.hparams), "state_dict": module.state_dict(),
                "checkpoint_format": CHECKPOINT_FORMAT, "global_step": 0}, ckpt)  # fmt: skip

    report = validation_breakdown.main(["--ckpt", str(ckpt), "--out", str(tmp_path / "breakdown.json")])

    expected = evaluate(compose_config("evaluate", [f"ckpt_path={ckpt}", f"paths.output_dir={tmp_path / 'eval'}"]))
    assert report["metrics"] == {k: v for k, v in expected.items() if k.startswith(("bbox/", "segm/"))}
    assert report["images"] == 8 and report["checkpoint_step"] == 0 and report["channels_last"] is True
    seconds = report["seconds"]  # each rounded to 1e-3 s
    # No part counted twice or timed outside the forward (the rests would go negative), none left out.
    assert seconds["model_rest"] >= -2e-3 and seconds["data"] >= -2e-3 and seconds["roi_heads_rest"] >= -2e-3
    assert all(seconds[name] >= 0 for name in validation_breakdown.REPORTED)
    assert min(seconds["backbone"], seconds["rpn"], seconds["mask_head"]) > 0

    model = module.model.eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        for images, _ in datamodule.val_dataloader():
            model.backbone(model.transform(list(images))[0].tensors)
    assert report["gflops"]["backbone"] == round(counter.get_total_flops() / 1e9, 1) > 0
    assert all(0 < fraction < 10 for fraction in report["gemm_fraction"].values())
