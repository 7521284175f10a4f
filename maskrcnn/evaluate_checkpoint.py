"""evaluate(cfg): COCO metrics of a checkpoint, plus the results files pycocotools scored."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.loggers import TensorBoardLogger

from maskrcnn.callbacks import CocoEvaluation
from maskrcnn.coco_eval import write_results
from maskrcnn.run_metrics import run_metrics, write_metrics, write_per_class
from maskrcnn.trained_model import load_detector


def evaluate(cfg: DictConfig) -> dict[str, Any]:
    """Writes metrics.json (with gt_json), per_class.json, bbox_results.json and segm_results.json to the run dir,
    and TensorBoard events (val metrics, per-class AP, PR curves; step 0) to its tensorboard/ folder."""
    ckpt_path = Path(cfg.ckpt_path)
    if not ckpt_path.is_file():
        raise FileNotFoundError(f"ckpt_path={str(ckpt_path)!r}: no such checkpoint file")
    module, run_config = load_detector(ckpt_path)
    run_cfg = OmegaConf.create(run_config)
    if cfg.get("data") is not None:
        run_cfg.data = cfg.data
    # The model's classes decide the labels: a val set is scored in the label space the model was trained in.
    datamodule = instantiate(run_cfg.data.module, classes=module.hparams.classes)
    if datamodule.shapes is None:
        datamodule.check_paths("validate")
    output_dir = Path(cfg.paths.output_dir)
    evaluation = CocoEvaluation(cfg.eval.backend)
    logger = TensorBoardLogger(save_dir=output_dir, name="tensorboard", version="", default_hp_metric=False)
    trainer = pl.Trainer(**cfg.trainer, logger=logger, enable_checkpointing=False, callbacks=[evaluation])
    trainer.validate(module, datamodule=datamodule, verbose=False)

    metrics = {
        **run_metrics(OmegaConf.to_container(run_cfg, resolve=True), evaluation.metrics),
        "ckpt_path": str(ckpt_path.resolve()),
        "gt_json": str(Path(datamodule.val_dataset.annotation_file).resolve()),
    }
    if trainer.is_global_zero:
        output_dir.mkdir(parents=True, exist_ok=True)
        for kind in ("bbox", "segm"):
            write_results(output_dir / f"{kind}_results.json", evaluation.results[kind])
        write_metrics(output_dir, metrics)
        write_per_class(output_dir, evaluation.per_class)
    return metrics
