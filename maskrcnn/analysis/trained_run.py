"""A train.py run's trained detector, rebuilt from its checkpoint: the one place that knows the checkpoint layout."""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from maskrcnn.checkpoints import CheckpointError, read_checkpoint
from maskrcnn.detector import MaskRCNN
from maskrcnn.model import build_model


def load_run(run_dir: Path) -> tuple[MaskRCNN, DictConfig]:
    """(the detector of <run_dir>/checkpoints/last.ckpt in eval mode, the run's full resolved config).

    The checkpoint is MaskRCNNModule's (maskrcnn/lit.py): `hyper_parameters.cfg` holds the run config and
    `state_dict` the module's weights, the detector's under `model.`. Loaded with weights_only=True.
    """
    path = Path(run_dir) / "checkpoints" / "last.ckpt"
    checkpoint = read_checkpoint(path)
    try:
        cfg = OmegaConf.create(checkpoint["hyper_parameters"]["cfg"])
        weights = checkpoint["state_dict"]
    except (KeyError, TypeError) as e:
        raise CheckpointError(f"{path}: no hyper_parameters.cfg or state_dict; not a train.py checkpoint") from e
    # Every weight comes from the checkpoint: building with the config's pretrained backbone weights would
    # download them (or fail offline) for nothing.
    cfg.model.backbone.weights = None
    model = build_model(cfg.model, cfg.roi, cfg.data.num_classes, cfg.data.image_min_size, cfg.data.image_max_size)
    state = {key.removeprefix("model."): value for key, value in weights.items() if key.startswith("model.")}
    try:
        model.load_state_dict(state)
    except RuntimeError as e:  # missing or unexpected keys, wrong shapes: the model code changed since the run
        raise CheckpointError(f"{path}: its weights do not fit the model its config builds today: {e}") from e
    return model.eval(), cfg
