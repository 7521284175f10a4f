"""The RoI sweep through Hydra's submitit launcher, run with its local executor (the SLURM one's twin)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def test_the_slurm_launcher_config_composes(compose_cfg):
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    cfg = compose_cfg(
        "train",
        ["hydra/launcher=slurm", "hydra.launcher.partition=gpu", "experiment=coco_r50_c4_1x"],
        return_hydra_config=True,
    )
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("SlurmLauncher") and launcher.partition == "gpu"
    assert (launcher.nodes, launcher.gpus_per_node, launcher.tasks_per_node) == (1, 8, 8), "one task per GPU"


@pytest.mark.slow
def test_a_two_job_sweep_with_the_submitit_local_launcher(tmp_path):
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    sweep = tmp_path / "sweep"
    proc = subprocess.run(
        [
            sys.executable,
            str(REPO / "train.py"),
            "-m",
            "hydra/launcher=submitit_local",
            "hydra.launcher.timeout_min=30",
            "experiment=smoke",
            "roi=pool,align",
            "trainer.max_steps=2",
            "trainer.val_check_interval=2",
            "optim.warmup_iters=1",
            "data.module.val_batch_size=8",
            f"paths.data_dir={tmp_path / 'data'}",
            f"hydra.sweep.dir={sweep}",
        ],
        cwd=tmp_path,
        # submitit's workers import the task by module name: make it this checkout's, installed or not.
        env={**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))},
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    for job in ("r18_fpn_pool_s0", "r18_fpn_align_s0"):
        metrics = json.loads((sweep / job / "metrics.json").read_text())
        assert metrics["steps"] == 2 and metrics["roi"] == job.split("_")[2]
    assert list((sweep / ".submitit").iterdir()), "submitit ran the jobs (its logs are kept)"
