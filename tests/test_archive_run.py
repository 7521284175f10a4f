"""maskrcnn.analysis.archive_run: a run's metrics, configs, scalar and PR-curve events; no checkpoints or pictures."""

import json

import numpy as np
import pytest
import torch
from pytorch_lightning.loggers import TensorBoardLogger
from tensorboard.backend.event_processing.event_file_loader import RawEventFileLoader
from tensorboard.compat.proto.event_pb2 import Event

from maskrcnn.analysis import archive_run
from maskrcnn.analysis.pr_curves import read_pr_curves


@pytest.fixture
def run_dir(tmp_path):
    """A run directory laid out as train.py writes one, TensorBoard events from the same Lightning logger."""
    run = tmp_path / "sweep" / "r18_c4_align_s0"
    (run / ".hydra").mkdir(parents=True)
    (run / "metrics.json").write_text(json.dumps({"segm/AP": 0.5, "roi": "align", "seed": 0}))
    (run / ".hydra" / "config.yaml").write_text("seed: 0\n")
    (run / ".hydra" / "overrides.yaml").write_text("- roi=align\n")
    (run / "train.log").write_text("step 1\n")
    (run / "checkpoints").mkdir()
    (run / "checkpoints" / "last.ckpt").write_bytes(b"weights")
    logger = TensorBoardLogger(str(run), name="tensorboard", version="", default_hp_metric=False)
    for step in range(5):
        logger.log_metrics({"train/loss": 1.0 / (step + 1), "lr-SGD": 0.02 * step}, step=step)
    logger.experiment.add_image("val_images/1", torch.rand(3, 32, 32), 4)
    logger.experiment.add_histogram("weights", torch.randn(100), 4)
    recall = np.linspace(1, 0, 11)
    logger.experiment.add_pr_curve_raw("pr/segm_iou50", 10 * recall, np.ones(11), np.zeros(11), 10 - 10 * recall,
                                       1 - recall / 2, recall, global_step=4, num_thresholds=11)  # fmt: skip
    logger.log_hyperparams({"roi": "align", "seed": 0}, {"hparams/segm_AP": 0.5})
    logger.finalize("success")
    return run


def _records(directory):
    """[(raw bytes, Event)] over the directory's event files, in file order."""
    return [(raw, Event.FromString(raw)) for f in sorted(directory.glob("tensorboard/events.out.tfevents.*"))
            for raw in RawEventFileLoader(str(f)).Load()]


def _values(records):
    return [v for _, e in records if e.HasField("summary") for v in e.summary.value]


def test_archive_keeps_scalars_bit_for_bit_and_drops_pictures_and_checkpoints(run_dir, tmp_path):
    dest = tmp_path / "results" / "runs"
    archive_run.main([str(run_dir), str(dest)])
    out = dest / run_dir.name
    files = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
    events = [f for f in files if "tfevents" in f]
    assert [f for f in files if f not in events] == [
        ".hydra/config.yaml", ".hydra/overrides.yaml", "metrics.json", "tensorboard/hparams.yaml", "train.log"]
    assert [f.split("/")[-1] for f in events] == [p.name for p in sorted(run_dir.glob("tensorboard/events*"))]
    assert (out / "metrics.json").read_bytes() == (run_dir / "metrics.json").read_bytes()

    before, after = _records(run_dir), _records(out)
    tags = {v.tag for v in _values(before)}
    assert {"val_images/1", "weights", "train/loss"} <= tags, "the fixture wrote pictures, histograms, scalars"
    scalars = [raw for raw, e in before if e.HasField("summary") and all(v.HasField("simple_value")
                                                                        for v in e.summary.value)]
    assert len(scalars) == 11, "5 steps x 2 scalars + the final metric log_hyperparams writes"
    assert [raw for raw, _ in after if raw in scalars] == scalars, "every scalar, byte for byte, in order"
    kept = {v.tag for v in _values(after)}
    assert "val_images/1" not in kept and "weights" not in kept
    assert {"train/loss", "lr-SGD", "hparams/segm_AP"} <= kept
    assert any(v.metadata.plugin_data.plugin_name == "hparams" for v in _values(after))
    assert after[0][1].HasField("file_version")
    (curve,) = read_pr_curves(out / "tensorboard").values()
    assert curve.tag == "pr/segm_iou50" and curve.step == 4, "PR curves are kept (6 x 101 floats each)"
    recall = np.linspace(1, 0, 11)
    assert np.allclose(curve.precision, 1 - recall / 2) and np.allclose(curve.recall, recall)
    assert sum(p.stat().st_size for p in out.glob("tensorboard/events*")) < sum(
        p.stat().st_size for p in run_dir.glob("tensorboard/events*")) / 2


def test_archive_refuses_unfinished_or_already_archived_runs(run_dir, tmp_path, capsys):
    dest = tmp_path / "dest"
    archive_run.main([str(run_dir), str(dest)])
    unfinished = run_dir.parent / "r18_c4_pool_s0"
    unfinished.mkdir()
    for runs, message in [([run_dir], "already exists; remove it first"),
                          ([unfinished], "r18_c4_pool_s0: no metrics.json")]:
        with pytest.raises(SystemExit) as exit_info:
            archive_run.main([*map(str, runs), str(dest)])
        assert exit_info.value.code == 2 and message in capsys.readouterr().err
    assert sorted(p.name for p in dest.iterdir()) == [run_dir.name], "nothing copied, no temporary left"
