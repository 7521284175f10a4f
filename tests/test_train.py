"""End-to-end: train(cfg) with experiment=smoke, then evaluate the checkpoint; DDP via the real CLI."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from maskrcnn.analysis.pr_curves import read_pr_curves
from maskrcnn.evaluate_checkpoint import evaluate
from maskrcnn.training import train

REPO = Path(__file__).resolve().parents[1]
METRIC_KEYS = [f"{kind}/{m}" for kind in ("bbox", "segm") for m in ("AP", "AP50", "AP75", "APs", "APm", "APl")]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("data")


def _smoke_overrides(data_dir: Path, out: Path, *extra: str) -> list[str]:
    return ["experiment=smoke", f"paths.data_dir={data_dir}", f"paths.output_dir={out}", *extra]


@pytest.fixture(scope="module")
def align_run(data_dir, tmp_path_factory):
    from maskrcnn.config import compose_config

    out = tmp_path_factory.mktemp("align_run")
    cfg = compose_config("train", _smoke_overrides(data_dir, out, "roi=align"))
    return out, train(cfg)


def _check_run_dir(out: Path, metrics: dict, roi: str) -> None:
    written = json.loads((out / "metrics.json").read_text())
    assert written == metrics
    for key in METRIC_KEYS:
        assert 0.0 <= written[key] <= 1.0 or written[key] == -1.0, key
    assert written["roi"] == roi and written["model"] == "r18_fpn" and written["seed"] == 0
    assert written["steps"] == 20
    assert (out / "checkpoints" / "last.ckpt").is_file()
    assert list((out / "checkpoints").glob("best-step*.ckpt")), "the best-by-segm_AP checkpoint is kept"
    assert list((out / "tensorboard").glob("events.out.tfevents.*"))


def test_smoke_train_align_writes_metrics_checkpoint_and_events(align_run):
    out, metrics = align_run
    _check_run_dir(out, metrics, "align")


def test_smoke_train_pool_skipping_a_corrupt_image(compose_cfg, align_run, data_dir, tmp_path):
    """roi=pool, on a copy of the data with one corrupt training image and on_bad_image=skip."""
    shutil.copytree(data_dir, tmp_path / "data")
    (image,) = (tmp_path / "data").glob("shapes-*/train/000005.png")
    image.write_bytes(image.read_bytes()[:100])  # truncated PNG
    out = tmp_path / "run"
    cfg = compose_cfg("train", _smoke_overrides(tmp_path / "data", out, "roi=pool", "data.module.on_bad_image=skip"))
    metrics = train(cfg)
    _check_run_dir(out, metrics, "pool")
    assert metrics["skipped_images"] == 1, "the skipped image is counted at the end"


def test_tensorboard_has_losses_lr_ap_and_pictures(align_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out, _ = align_run
    events = EventAccumulator(str(out / "tensorboard"), size_guidance={"images": 0}).Reload()
    scalars = set(events.Tags()["scalars"])
    for tag in (
        "train/loss",
        "train/loss_mask",
        "train/loss_classifier",
        "train/loss_objectness",
        "val/segm_AP",
        "val/bbox_AP75",
    ):
        assert tag in scalars, (tag, sorted(scalars))
    assert any(tag.startswith("lr-SGD") for tag in scalars), sorted(scalars)
    assert len(events.Scalars("train/loss")) == 20, "losses are logged every step"
    assert events.Tags()["images"], "prediction-vs-truth pictures are logged"


def test_evaluate_reproduces_training_metrics(compose_cfg, align_run, tmp_path):
    out, metrics = align_run
    cfg = compose_cfg("evaluate", [f"ckpt_path={out / 'checkpoints' / 'last.ckpt'}", f"paths.output_dir={tmp_path}"])
    result = evaluate(cfg)
    for key in METRIC_KEYS:
        assert result[key] == pytest.approx(metrics[key], abs=1e-9), key
    assert Path(result["gt_json"]).is_file()
    evaluated, trained = (json.loads((d / "per_class.json").read_text()) for d in (tmp_path, out))
    for kind, rows in trained.items():
        assert [r["id"] for r in evaluated[kind]] == [r["id"] for r in rows]
        for got, want in zip(evaluated[kind], rows, strict=True):
            assert got == pytest.approx(want, abs=1e-9)
    for name in ("metrics.json", "bbox_results.json", "segm_results.json"):
        assert (tmp_path / name).is_file()
    curves = read_pr_curves(tmp_path / "tensorboard")
    assert set(curves) == {f"pr/{kind}_iou{iou}" for kind in ("bbox", "segm") for iou in (50, 75)}
    for kind in ("bbox", "segm"):
        assert curves[f"pr/{kind}_iou50"].precision.mean() == pytest.approx(metrics[f"{kind}/AP50"], abs=1e-6)
    segm = json.loads((tmp_path / "segm_results.json").read_text())
    assert all({"image_id", "category_id", "segmentation", "score"} <= set(r) for r in segm)


def test_evaluate_missing_checkpoint_names_the_path(compose_cfg, tmp_path):
    cfg = compose_cfg("evaluate", [f"ckpt_path={tmp_path / 'nope.ckpt'}", f"paths.output_dir={tmp_path}"])
    with pytest.raises(FileNotFoundError, match="nope.ckpt"):
        evaluate(cfg)


def _cli(script: str, *overrides: str, cwd: Path = REPO) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(REPO / script), *overrides], cwd=cwd, capture_output=True, text=True, timeout=600
    )


@pytest.mark.slow
def test_ddp_two_cpu_processes_one_run_dir_and_same_ap(align_run, data_dir, tmp_path):
    """2-process gloo DDP: training makes exactly one run dir; evaluation gathers all ranks exactly."""
    runs = tmp_path / "runs"
    proc = _cli(
        "train.py",
        "experiment=smoke",
        "trainer=ddp",
        "trainer.accelerator=cpu",
        "trainer.devices=2",
        "optim.scale_schedule=false",  # the step count as given, at the doubled global batch
        "trainer.max_steps=4",  # a run dir, checkpoints and metrics need no more steps than a validation's
        "trainer.val_check_interval=4",
        f"paths.data_dir={data_dir}",
        f"hydra.run.dir={runs}/ddp",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert [p.name for p in runs.iterdir()] == ["ddp"]
    assert json.loads((runs / "ddp" / "metrics.json").read_text())["steps"] == 4

    out, metrics = align_run
    proc = _cli(
        "evaluate.py",
        f"ckpt_path={out / 'checkpoints' / 'last.ckpt'}",
        "trainer.accelerator=cpu",
        "trainer.devices=2",
        "+trainer.strategy=ddp",
        f"hydra.run.dir={tmp_path}/eval",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    ddp_metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    for key in METRIC_KEYS:
        assert ddp_metrics[key] == pytest.approx(metrics[key], abs=1e-9), key


def test_training_logs_per_class_ap_and_pr_curves(align_run):
    """per_class.json beside metrics.json, per-class AP scalars and COCOeval's PR curves in TensorBoard."""
    out, metrics = align_run
    per_class = json.loads((out / "per_class.json").read_text())
    assert set(per_class) == {"bbox", "segm"}
    for row in per_class["segm"]:
        assert set(row) == {"id", "name", "AP", "AP50", "AP75"} and 0.0 <= row["AP"] <= 1.0

    accumulator = EventAccumulator(str(out / "tensorboard"), size_guidance={"scalars": 0})
    accumulator.Reload()
    assert {f"val_per_class/segm_AP/{row['name']}" for row in per_class["segm"]} <= set(accumulator.Tags()["scalars"])
    curves = read_pr_curves(out / "tensorboard")
    assert set(curves) == {f"pr/{kind}_iou{iou}" for kind in ("bbox", "segm") for iou in (50, 75)}
    for kind in ("bbox", "segm"):
        curve = curves[f"pr/{kind}_iou50"]
        assert curve.step == metrics["steps"]
        assert curve.recall[0] == 1.0 and curve.recall[-1] == 0.0 and len(curve.recall) == 101
        assert curve.precision.mean() == pytest.approx(metrics[f"{kind}/AP50"], abs=1e-6), "COCO's AP50 is its mean"
        total = curve.true_positives + curve.false_negatives
        assert np.allclose(total, total[0]) and total[0] > 0, "one ground-truth count"
