"""evaluate(cfg): COCO metrics of a checkpoint, plus the results files pycocotools scored."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from maskrcnn.checkpoints import CheckpointError, read_checkpoint
from maskrcnn.evaluation import write_results
from maskrcnn.lit import MaskRCNNModule
from maskrcnn.resolvers import roi_id


def evaluate(cfg: DictConfig) -> dict[str, Any]:
    """Writes metrics.json (with gt_json), bbox_results.json and segm_results.json to the run dir."""
    ckpt_path = Path(cfg.ckpt_path)
    if not ckpt_path.is_file():
        raise FileNotFoundError(f"ckpt_path={str(ckpt_path)!r}: no such checkpoint file")
    checkpoint = read_checkpoint(ckpt_path)
    if "hyper_parameters" not in checkpoint or "state_dict" not in checkpoint:
        raise CheckpointError(
            f"ckpt_path={str(ckpt_path)!r} is not a checkpoint written by train.py (no hyper_parameters/state_dict). "
            "torchvision Mask R-CNN weights convert with: python -m maskrcnn.torchvision_weights SRC.pth DST.ckpt"
        )
    hparams = checkpoint["hyper_parameters"]
    run_cfg = OmegaConf.create(hparams["cfg"])
    if cfg.get("data") is not None:
        run_cfg.data = cfg.data
    run_cfg.eval = cfg.eval
    run_cfg.model.backbone.weights = None  # the checkpoint holds every weight: no ImageNet download
    datamodule = instantiate(run_cfg.data.module)
    if datamodule.shapes is None:
        datamodule.check_paths("validate")
    module = MaskRCNNModule(OmegaConf.to_container(run_cfg, resolve=True), hparams.get("classes"))
    module.load_state_dict(checkpoint["state_dict"])
    trainer = pl.Trainer(**cfg.trainer, logger=False, enable_checkpointing=False)
    trainer.validate(module, datamodule=datamodule, verbose=False)

    output_dir = Path(cfg.paths.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    metrics = {
        **module.metrics,
        "roi": roi_id(run_cfg.roi.name, run_cfg.roi.get("impl", "ours")),
        "model": run_cfg.model.name,
        "seed": int(run_cfg.seed),
        "ckpt_path": str(ckpt_path.resolve()),
        "gt_json": str(Path(datamodule.val_dataset.annotation_file).resolve()),
    }
    if trainer.is_global_zero:
        for kind in ("bbox", "segm"):
            write_results(output_dir / f"{kind}_results.json", module.results[kind])
        (output_dir / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
        print(f"metrics: {output_dir / 'metrics.json'}  segm/AP={metrics.get('segm/AP', float('nan')):.4f}")
    return metrics
