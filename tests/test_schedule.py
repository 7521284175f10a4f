"""The schedule scales with the global batch as detectron2's does: lr linearly, every length in steps inversely."""

import logging

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from maskrcnn.schedule import scaled_schedule, warmup_multistep, world_size
from maskrcnn.training import train

SMOKE_SCHEDULE = [
    "trainer.max_steps=3",
    "optim.steps=[2]",
    "optim.warmup_iters=1",
    "trainer.val_check_interval=3",
    "train.checkpoint_every_n_steps=3",
]


def test_a_quarter_of_the_base_batch_gets_four_times_the_steps(compose_cfg):
    cfg = compose_cfg("train", ["experiment=smoke", "optim.base_batch_size=8", *SMOKE_SCHEDULE])  # batch 2
    schedule = scaled_schedule(cfg, world_size=1)
    assert schedule.global_batch_size == 2 and schedule.factor == 4
    assert schedule.lr == pytest.approx(cfg.optim.lr / 4)
    assert (schedule.max_steps, schedule.lr_steps, schedule.warmup_iters) == (12, [8], 4)
    assert (schedule.val_check_interval, schedule.checkpoint_every_n_steps) == (12, 12)


def test_more_gpus_shorten_the_schedule_and_raise_the_lr(compose_cfg):
    cfg = compose_cfg("train", ["experiment=coco_r50_fpn_1x"])  # 90k steps at 16 = 8 GPUs x 2
    assert scaled_schedule(cfg, world_size=8).factor == 1
    schedule = scaled_schedule(cfg, world_size=16)
    assert (schedule.max_steps, schedule.lr_steps, schedule.warmup_iters) == (45000, [30000, 40000], 500)
    assert schedule.lr == pytest.approx(0.04)


def test_scale_schedule_false_scales_only_the_lr(compose_cfg):
    cfg = compose_cfg("train", ["experiment=coco_r50_fpn_1x", "optim.scale_schedule=false"])
    schedule = scaled_schedule(cfg, world_size=1)
    assert schedule.lr == pytest.approx(0.0025)
    assert (schedule.max_steps, schedule.lr_steps, schedule.warmup_iters) == (90000, [60000, 80000], 1000)


def test_world_size_is_resolved_without_launching_processes(compose_cfg):
    cfg = compose_cfg("train", ["trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2", "trainer.num_nodes=1"])
    assert world_size(cfg.trainer) == 2
    assert world_size(compose_cfg("train").trainer) == 1


@pytest.mark.slow
def test_a_quarter_batch_run_trains_four_times_the_steps_and_says_so(compose_cfg, tmp_path, caplog):
    out = tmp_path / "run"
    overrides = ["experiment=smoke", "optim.base_batch_size=8", f"paths.data_dir={tmp_path / 'data'}"]
    cfg = compose_cfg("train", [*overrides, *SMOKE_SCHEDULE, f"paths.output_dir={out}"])
    with caplog.at_level(logging.INFO, logger="maskrcnn.schedule"):
        metrics = train(cfg)
    assert metrics["steps"] == 12
    assert "schedule scaled for global batch 2 (optim.base_batch_size 8, x4 steps" in caplog.text
    assert "max_steps 3 -> 12, lr steps [2] -> [8], warmup 1 -> 4" in caplog.text

    accumulator = EventAccumulator(str(out / "tensorboard"))
    accumulator.Reload()
    lr_tag = sorted(t for t in accumulator.Tags()["scalars"] if t.startswith("lr-"))[0]
    logged = {e.step: e.value for e in accumulator.Scalars(lr_tag)}
    lr = cfg.optim.lr / 4
    for step in range(12):
        expected = lr * warmup_multistep(step, 4, cfg.optim.warmup_factor, [8], cfg.optim.gamma)
        assert logged[step] == pytest.approx(expected, rel=1e-6), step
