"""Faults during training, injected for real: SIGKILL mid-run then resume, and repeatability.

Every run here is `train.py experiment=smoke train.deterministic=true` in a subprocess: 20 steps over
epochs of 12 batches, a checkpoint at step 14 (two batches into epoch 1), one DataLoader worker (whose
first batches are drawn before Lightning sets the epoch, which the resume has to get right). The test runs in
both memory layouts (train.channels_last true and false). It is the repeatability test too: the killed and the
resumed process together must reproduce an independent straight run's every weight, metric and loss (but the
checkpoint step's own, which the kill may take), so two deterministic runs of either layout match bitwise.
"""

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from maskrcnn.checkpoints import read_checkpoint

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def _train(run_dir: Path, data_dir: Path, *extra: str) -> list[str]:
    return [
        sys.executable,
        str(REPO / "train.py"),
        "experiment=smoke",
        "train.deterministic=true",
        "train.checkpoint_every_n_steps=14",
        "data.module.num_workers=1",
        "trainer.enable_progress_bar=false",
        f"paths.data_dir={data_dir}",
        f"hydra.run.dir={run_dir}",
        *extra,
    ]


def _run(cmd: list[str]) -> None:
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]


def _losses(run_dir: Path) -> dict[int, float]:
    """step -> train/loss from the run's TensorBoard logs (purged steps already dropped by the reader)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir / "tensorboard")).Reload()
    return {event.step: event.value for event in events.Scalars("train/loss")}


def _final_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return read_checkpoint(run_dir / "checkpoints" / "last.ckpt")["state_dict"]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("data")


@pytest.fixture(scope="module", params=["true", "false"], ids=["channels_last", "nchw"])
def layout(request):
    """The train.channels_last override of every run in a test."""
    return f"train.channels_last={request.param}"


@pytest.fixture(scope="module")
def straight_run(data_dir, layout, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("straight") / "run"
    _run(_train(run_dir, data_dir, layout))
    return run_dir


def test_sigkill_then_resume_gives_the_straight_runs_weights_and_metrics(straight_run, data_dir, layout, tmp_path):
    run_dir = tmp_path / "killed"
    last = run_dir / "checkpoints" / "last.ckpt"
    cmd = _train(run_dir, data_dir, layout)
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 600
    while not last.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL, "the run ended before the kill"
    assert read_checkpoint(last)["global_step"] == 14, "the kill should land between the step-14 and step-20 saves"
    assert not (run_dir / "metrics.json").exists()

    _run(_train(run_dir, data_dir, layout, "ckpt_path=last"))
    hparams = read_checkpoint(last)["hyper_parameters"]
    assert layout == f"train.channels_last={str(hparams['channels_last']).lower()}"

    straight_weights, resumed_weights = _final_weights(straight_run), _final_weights(run_dir)
    assert straight_weights.keys() == resumed_weights.keys()
    for name, tensor in straight_weights.items():
        assert torch.equal(tensor, resumed_weights[name]), f"{name} differs after kill + resume"
    straight_metrics = json.loads((straight_run / "metrics.json").read_text())
    resumed_metrics = json.loads((run_dir / "metrics.json").read_text())
    for key, value in straight_metrics.items():
        if key.startswith(("bbox/", "segm/")):
            assert resumed_metrics[key] == value, key
    assert resumed_metrics["steps"] == 20
    # The same TensorBoard run, continued: one loss per step, the killed run's tail purged.
    writers = {re.search(r"\.(\d+)\.\d+$", f.name).group(1) for f in (run_dir / "tensorboard").glob("events.*")}
    assert len(writers) == 2, "the killed and the resumed process log into the same TensorBoard run"
    straight_losses, resumed_losses = _losses(straight_run), _losses(run_dir)
    assert len(straight_losses) == 20
    assert set(straight_losses) - set(resumed_losses) <= {13}, "only the checkpoint step's own scalar may be lost"
    assert all(straight_losses[step] == loss for step, loss in resumed_losses.items())
