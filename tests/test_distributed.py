"""DDP under Hydra multirun, with a rank whose batch has no annotations at all (2 CPU processes, gloo)."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hydra.utils import instantiate

from maskrcnn.data.sampler import GroupedBatchSampler

REPO = Path(__file__).resolve().parents[1]


def _first_batches(dataset, batch_size: int, seed: int) -> list[list[int]]:
    """Each rank's first batch (image indices) of epoch 0, exactly as InstanceDataModule samples them."""
    return [
        [
            index
            for index, _ in next(
                iter(GroupedBatchSampler(dataset.group_ids(), batch_size, seed=seed, rank=r, world_size=2))
            )
        ]
        for r in range(2)
    ]


@pytest.mark.slow
def test_multirun_of_two_ddp_jobs_with_an_empty_rank(compose_cfg, tmp_path):
    """Two configs x 2 processes: 2 jobs, not 4; no hang when rank 1's first batch has no annotations and
    rank 0's second batch has only crowd regions."""
    cfg = compose_cfg(
        "train", ["experiment=smoke", f"paths.data_dir={tmp_path / 'data'}", f"paths.output_dir={tmp_path}"]
    )
    datamodule = instantiate(cfg.data.module)
    datamodule.prepare_data()
    datamodule.setup("fit")
    dataset = datamodule.train_dataset
    rank0_first, rank1_first = _first_batches(dataset, cfg.data.module.batch_size, cfg.seed)

    annotations = json.loads(Path(cfg.data.module.train_annotations).read_text())
    empty_ids = {int(dataset.image_ids[i]) for i in rank1_first}
    rank0_ids = {int(dataset.image_ids[i]) for i in rank0_first}
    annotations["annotations"] = [a for a in annotations["annotations"] if a["image_id"] not in empty_ids]
    assert any(a["image_id"] in rank0_ids for a in annotations["annotations"]), "rank 0 has instances to train on"
    crowd_ids = {int(i) for i in np.setdiff1d(dataset.image_ids, list(empty_ids | rank0_ids))[:4]}
    for ann in annotations["annotations"]:
        if ann["image_id"] in crowd_ids:
            ann["iscrowd"] = 1
    edited = tmp_path / "instances_train_edited.json"
    edited.write_text(json.dumps(annotations))

    sweep = tmp_path / "sweep"
    proc = subprocess.run(
        [
            sys.executable,
            str(REPO / "train.py"),
            "-m",
            "experiment=smoke",
            "roi=pool,align",
            "trainer=ddp",
            "trainer.accelerator=cpu",
            "trainer.devices=2",
            "trainer.max_steps=6",
            "trainer.val_check_interval=6",
            "optim.scale_schedule=false",  # the step count as given, at the doubled global batch
            f"data.module.train_annotations={edited}",
            f"paths.data_dir={tmp_path / 'data'}",
            f"hydra.sweep.dir={sweep}",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    jobs = sorted(p.name for p in sweep.iterdir() if p.is_dir())
    assert jobs == ["r18_fpn_align_s0", "r18_fpn_pool_s0"], jobs
    for job in jobs:
        metrics = json.loads((sweep / job / "metrics.json").read_text())
        assert metrics["steps"] == 6
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "instances_train_edited.json", "sweep"], (
        "no stray run dirs from the ranks"
    )
