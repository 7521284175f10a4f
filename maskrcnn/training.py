"""train(cfg): one training run, from a composed Hydra config to <run_dir>/metrics.json."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.callbacks import LearningRateMonitor, ModelCheckpoint
from pytorch_lightning.loggers import TensorBoardLogger

from maskrcnn.lit import MaskRCNNModule
from maskrcnn.runinfo import device_description


def train(cfg: DictConfig) -> dict[str, Any]:
    """Trains, validates the final weights, writes metrics.json, returns its content."""
    output_dir = Path(cfg.paths.output_dir)
    pl.seed_everything(cfg.seed, workers=True)
    datamodule = instantiate(cfg.data.module)
    module = MaskRCNNModule(OmegaConf.to_container(cfg, resolve=True))
    logger = TensorBoardLogger(str(output_dir), name="tensorboard", version="", default_hp_metric=False)
    checkpoints = ModelCheckpoint(
        dirpath=output_dir / "checkpoints",
        filename="best-step{step}",
        auto_insert_metric_name=False,
        monitor="val/segm_AP",
        mode="max",
        save_last=True,
    )
    trainer: pl.Trainer = instantiate(
        cfg.trainer,
        logger=logger,
        callbacks=[checkpoints, LearningRateMonitor("step")],
        default_root_dir=str(output_dir),
    )
    start = time.monotonic()
    trainer.fit(module, datamodule=datamodule, ckpt_path=resolve_ckpt_path(cfg.ckpt_path, output_dir))
    train_minutes = (time.monotonic() - start) / 60
    if module.metrics_step != trainer.global_step:  # the final weights were not evaluated yet
        trainer.validate(module, datamodule=datamodule, verbose=False)

    metrics = {
        **module.metrics,
        "roi": cfg.roi.name,
        "model": cfg.model.name,
        "data": cfg.data.name,
        "seed": int(cfg.seed),
        "steps": int(trainer.global_step),
        "train_minutes": round(train_minutes, 2),
        "device": device_description(),
    }
    if trainer.is_global_zero:
        (output_dir / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
        logger.log_hyperparams(
            {"roi": cfg.roi.name, "model": cfg.model.name, "seed": int(cfg.seed), "data": cfg.data.name},
            {f"hparams/{k.replace('/', '_')}": v for k, v in module.metrics.items()},
        )
        print(f"metrics: {output_dir / 'metrics.json'}  segm/AP={metrics.get('segm/AP', float('nan')):.4f}")
    return metrics


def resolve_ckpt_path(ckpt_path: str | None, output_dir: Path) -> str | None:
    """None, "last" (the run dir's checkpoints/last.ckpt) or an existing file."""
    if ckpt_path is None:
        return None
    path = output_dir / "checkpoints" / "last.ckpt" if ckpt_path == "last" else Path(ckpt_path)
    if not path.is_file():
        raise FileNotFoundError(f"ckpt_path={ckpt_path!r}: no checkpoint at {path}")
    return str(path)
