"""train(cfg): one training run, from a composed Hydra config to <run_dir>/metrics.json."""

from __future__ import annotations

import logging
import time
import warnings
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.callbacks import LearningRateMonitor, ModelCheckpoint
from pytorch_lightning.loggers import TensorBoardLogger

from maskrcnn.callbacks import CocoEvaluation, NonFiniteGuard, RNGStates, SkippedImages, ValidationImages
from maskrcnn.callbacks.convergence import ConvergenceCheck
from maskrcnn.callbacks.validation_schedule import ValidationSchedule
from maskrcnn.checkpoints import AtomicCheckpointIO, LastCheckpoint, read_checkpoint
from maskrcnn.lightning_module import DetectorModule
from maskrcnn.nested import flatten
from maskrcnn.run_metrics import run_metrics, write_metrics, write_per_class
from maskrcnn.runinfo import code_version, device_description
from maskrcnn.schedule import Schedule, log_schedule, scaled_schedule, world_size

log = logging.getLogger(__name__)

# Keys that may legitimately differ between a run and its resumption.
_RESUMABLE_CHANGES = ("ckpt_path", "paths.", "trainer.max_steps", "trainer.enable_progress_bar", "hydra")


def train(cfg: DictConfig) -> dict[str, Any]:
    """Trains (or resumes), validates the final weights, writes metrics.json, returns its content."""
    code = code_version()  # the checkout as the run starts: what trains is what was there then
    output_dir = Path(cfg.paths.output_dir)
    ckpt_path = resolve_ckpt_path(cfg.ckpt_path, output_dir)
    resumed_step = _check_resumable(ckpt_path, cfg) if ckpt_path else 0
    pl.seed_everything(cfg.seed, workers=True)
    datamodule = instantiate(cfg.data.module)
    datamodule.prepare_data()  # the built-in data is generated here if needed (idempotent; Lightning calls it too)
    datamodule.setup("fit")  # the classes come from the training annotations; a missing dataset fails here,
    # before any weights download
    schedule = scaled_schedule(cfg, world_size(cfg.trainer))
    log_schedule(cfg, schedule)
    module = build_module(cfg, datamodule.classes, schedule)
    # purge_step: TensorBoard drops what a killed run logged after the checkpoint we resume from. +1: the
    # pictures of a validation at the checkpoint's step are logged at that step (its scalars one lower).
    logger = TensorBoardLogger(
        str(output_dir),
        name="tensorboard",
        version="",
        default_hp_metric=False,
        purge_step=resumed_step + 1 if resumed_step else None,
    )
    evaluation, guard = CocoEvaluation(cfg.eval.backend), NonFiniteGuard(cfg.train.nonfinite)
    skipped_images = SkippedImages()
    callbacks = [
        evaluation,
        ValidationImages(cfg.train.vis_images),
        guard,
        skipped_images,
        RNGStates(),
        ModelCheckpoint(
            dirpath=output_dir / "checkpoints",
            filename="best-step{step}",
            auto_insert_metric_name=False,
            monitor=cfg.train.best_checkpoint.monitor,
            mode=cfg.train.best_checkpoint.mode,
        ),
        LastCheckpoint(output_dir / "checkpoints", schedule.checkpoint_every_n_steps),
        LearningRateMonitor("step"),
    ]
    if schedule.val_steps:
        callbacks.append(ValidationSchedule(schedule.val_check_interval, schedule.val_steps))
    convergence = _convergence_check(cfg, schedule)
    if convergence is not None:
        callbacks.append(convergence)
    trainer: pl.Trainer = instantiate(
        cfg.trainer,
        max_steps=schedule.max_steps,
        val_check_interval=schedule.val_check_interval,
        logger=logger,
        callbacks=callbacks,
        plugins=[AtomicCheckpointIO()],
        default_root_dir=str(output_dir),
    )
    start = time.monotonic()
    with warnings.catch_warnings():
        # Our batch sampler resumes mid-epoch itself (InstanceDataModule), which Lightning cannot see.
        warnings.filterwarnings("ignore", message="You're resuming from a checkpoint that ended before the epoch")
        trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True)
    train_minutes = (time.monotonic() - start) / 60
    if evaluation.metrics_step != trainer.global_step:  # the final weights were not evaluated yet
        trainer.validate(module, datamodule=datamodule, verbose=False)

    validations = evaluation.history
    metrics = {
        **run_metrics(cfg, evaluation.metrics),
        "steps": int(trainer.global_step),
        "train_minutes": round(train_minutes, 2),
        "device": device_description(),
        "skipped_steps": guard.skipped_steps,
        "skipped_images": len(skipped_images.image_ids),
        **code,
        "validations": validations,
        "tail": tail_mean(validations, int(cfg.train.get("report_tail", 1))),
        "convergence": None if convergence is None else convergence.verdict(validations),
    }
    if trainer.is_global_zero:
        if skipped_images.image_ids:
            ids = sorted(skipped_images.image_ids)
            log.warning("skipped %d unreadable training image(s), ids: %s", len(ids), ids[:50])
        write_metrics(output_dir, metrics)
        write_per_class(output_dir, evaluation.per_class)
        logger.log_hyperparams(
            {key: str(metrics[key]) if metrics[key] is None else metrics[key]
             for key in ("roi", "model", "seed", "data", "git_commit", "git_dirty")},
            {f"hparams/{k.replace('/', '_')}": v for k, v in evaluation.metrics.items()},
        )
    return metrics


def tail_mean(validations: list[dict[str, Any]], n: int) -> dict[str, Any] | None:
    """{"n", "steps", "metrics"}: the mean of each metric over the last n validations (fewer if the run made
    fewer); None without validations."""
    last = validations[-max(n, 1):]
    if not last:
        return None
    keys = [k for k in last[-1] if k != "step"]
    return {"n": len(last), "steps": [v["step"] for v in last],
            "metrics": {k: sum(v[k] for v in last) / len(last) for k in keys}}  # fmt: skip


def _convergence_check(cfg: DictConfig, schedule: Schedule) -> ConvergenceCheck | None:
    """train.convergence's rule, its window ending at the first LR decay (as scaled); None when not configured."""
    rule = cfg.train.get("convergence")
    if not rule:
        return None
    if not schedule.lr_steps:
        raise ValueError("train.convergence judges the classifier loss before the first LR decay: optim.steps is empty")
    return ConvergenceCheck(schedule.lr_steps[0], rule.window, rule.max_classifier_loss, rule.max_tail_range,
                            int(cfg.train.get("report_tail", 1)))  # fmt: skip


def build_module(cfg: DictConfig, classes: list[dict[str, Any]], schedule: Schedule | None = None) -> DetectorModule:
    """The run config's DetectorModule for `classes`, its optimizer following `schedule` (None: as configured)."""
    optim = OmegaConf.to_container(cfg.optim, resolve=True)
    if schedule is not None:
        optim.update(lr=schedule.lr, steps=schedule.lr_steps, warmup_iters=schedule.warmup_iters)
    return DetectorModule(
        model=OmegaConf.to_container(cfg.model, resolve=True),
        roi=OmegaConf.to_container(cfg.roi, resolve=True),
        classes=classes,
        image_min_size=cfg.data.image_min_size,
        image_max_size=cfg.data.image_max_size,
        optim=optim,
        run_config=OmegaConf.to_container(cfg, resolve=True),
        channels_last=bool(cfg.train.get("channels_last", False)),
    )


def resolve_ckpt_path(ckpt_path: str | None, output_dir: Path) -> str | None:
    """None, "last" (the run dir's checkpoints/last.ckpt) or an existing file."""
    if ckpt_path is None:
        return None
    path = output_dir / "checkpoints" / "last.ckpt" if ckpt_path == "last" else Path(ckpt_path)
    if not path.is_file():
        hint = " (resume into the old run dir with hydra.run.dir=<run dir>)" if ckpt_path == "last" else ""
        raise FileNotFoundError(f"ckpt_path={ckpt_path!r}: no checkpoint at {path}{hint}")
    return str(path)


def _check_resumable(ckpt_path: str, cfg: DictConfig) -> int:
    """Loads the checkpoint's metadata safely, warns about config changes; returns its global step."""
    checkpoint = read_checkpoint(ckpt_path, mmap=True)
    hparams = checkpoint.get("hyper_parameters", {})
    saved = flatten(hparams.get("run_config") or hparams.get("cfg") or {})  # format 2 or 1
    current = flatten(OmegaConf.to_container(cfg, resolve=True))
    changed = sorted(
        key
        for key in saved.keys() | current.keys()
        if saved.get(key) != current.get(key) and not key.startswith(_RESUMABLE_CHANGES)
    )
    if changed:
        details = "; ".join(f"{k}: {saved.get(k)!r} -> {current.get(k)!r}" for k in changed[:20])
        log.warning("resuming %s with a different config: %s", ckpt_path, details)
    return int(checkpoint["global_step"])

