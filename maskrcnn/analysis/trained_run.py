"""A train.py run's trained detector, rebuilt from the run dir's last checkpoint."""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from maskrcnn.detector import MaskRCNN
from maskrcnn.trained_model import load_detector


def load_run(run_dir: Path) -> tuple[MaskRCNN, DictConfig]:
    """(the detector of <run_dir>/checkpoints/last.ckpt in eval mode, the run's full resolved config).

    maskrcnn.trained_model.load_detector reads every checkpoint format (with weights_only=True) and builds
    the backbone without its pretrained weights: every weight comes from the checkpoint.
    """
    module, run_config = load_detector(Path(run_dir) / "checkpoints" / "last.ckpt")
    return module.model, OmegaConf.create(run_config)
