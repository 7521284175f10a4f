"""Checkpoint files under real faults: SIGKILL during a save, a truncated file, a file carrying code."""

import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from maskrcnn.checkpoints import AtomicCheckpointIO, CheckpointError, read_checkpoint
from maskrcnn.evaluate_checkpoint import evaluate
from maskrcnn.training import _check_resumable, train

REPO = Path(__file__).resolve().parents[1]

_SAVE_FOREVER = """
import sys, torch
from maskrcnn.checkpoints import AtomicCheckpointIO
io, path = AtomicCheckpointIO(), sys.argv[1]
io.save_checkpoint({"version": 0, "w": torch.zeros(4)}, path)
print("ready", flush=True)
big = torch.ones(32 * 2**20)  # 128 MiB: each save takes long enough to be caught in the middle
for version in range(1, 10_000):
    io.save_checkpoint({"version": version, "w": big}, path)
"""


def test_sigkill_during_save_leaves_a_loadable_checkpoint(tmp_path):
    path = tmp_path / "last.ckpt"
    proc = subprocess.Popen(
        [sys.executable, "-c", _SAVE_FOREVER, str(path)], cwd=REPO, stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout.readline().strip() == "ready"
    deadline = time.monotonic() + 120
    partial = []
    while not partial and time.monotonic() < deadline:
        partial = [p for p in tmp_path.glob(".last.ckpt.tmp-*") if p.stat().st_size > 2**20]
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert partial, "the kill should land while a checkpoint is half written"

    checkpoint = read_checkpoint(path)  # never torn: the old version or a complete new one
    expected = torch.zeros(4) if checkpoint["version"] == 0 else torch.ones(32 * 2**20)
    assert torch.equal(checkpoint["w"], expected)

    AtomicCheckpointIO().save_checkpoint({"version": -1}, path)
    assert read_checkpoint(path)["version"] == -1
    assert not list(tmp_path.glob(".last.ckpt.tmp-*")), "the next save removes the killed save's temp file"


def test_missing_checkpoint_names_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"no checkpoint file at .*nope\.ckpt"):
        read_checkpoint(tmp_path / "nope.ckpt")


def test_truncated_checkpoint_is_a_clear_error(tmp_path):
    path = tmp_path / "last.ckpt"
    torch.save({"w": torch.ones(1000)}, path)
    path.write_bytes(path.read_bytes()[:1500])
    with pytest.raises(CheckpointError, match=r"last\.ckpt: not a readable checkpoint"):
        read_checkpoint(path)


class _Payload:
    """Unpickling this runs code: it touches `marker`."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return Path.touch, (self.marker,)


@pytest.fixture
def malicious_checkpoint(tmp_path):
    def make(marker: Path) -> Path:
        path = tmp_path / f"evil-{marker.name}.ckpt"
        torch.save({"state_dict": {}, "global_step": 0, "payload": _Payload(marker)}, path)
        return path

    return make


def test_the_payload_is_real(malicious_checkpoint, tmp_path):
    marker = tmp_path / "pwned-by-plain-load"
    torch.load(malicious_checkpoint(marker), weights_only=False)
    assert marker.exists(), "an unsafe load runs the payload, so the refusals below are meaningful"


def test_resume_and_evaluate_refuse_checkpoints_that_carry_code(malicious_checkpoint, compose_cfg, tmp_path):
    marker = tmp_path / "pwned"
    evil = malicious_checkpoint(marker)
    cfg = compose_cfg("train", ["experiment=smoke", f"ckpt_path={evil}", f"paths.output_dir={tmp_path / 'run'}"])
    with pytest.raises(CheckpointError, match=r"evil-pwned\.ckpt: refused to load"):
        train(cfg)
    cfg = compose_cfg("evaluate", [f"ckpt_path={evil}", f"paths.output_dir={tmp_path / 'eval'}"])
    with pytest.raises(CheckpointError, match=r"evil-pwned\.ckpt: refused to load"):
        evaluate(cfg)
    assert not marker.exists()


def test_resuming_with_another_config_names_the_changed_keys(compose_cfg, tmp_path, caplog):
    cfg = compose_cfg("train", ["experiment=smoke", "roi=align", f"paths.output_dir={tmp_path}"])
    saved = compose_cfg(
        "train", ["experiment=smoke", "roi=pool", "trainer.max_steps=5", f"paths.output_dir={tmp_path}"]
    )
    path = tmp_path / "last.ckpt"
    torch.save({"global_step": 5, "hyper_parameters": {"cfg": OmegaConf.to_container(saved, resolve=True)}}, path)
    with caplog.at_level(logging.WARNING, logger="maskrcnn.training"):
        assert _check_resumable(str(path), cfg) == 5
    assert "roi.kind: 'pool' -> 'align'" in caplog.text
    assert "max_steps" not in caplog.text, "a longer schedule is a legitimate change"
