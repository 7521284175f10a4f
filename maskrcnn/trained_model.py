"""A checkpoint's trained detector, whichever version of this code wrote it: the one place that knows the layouts.

Format 2 (checkpoint_format = 2): the hyper-parameters are DetectorModule's arguments. Format 1 (before the
callbacks; e.g. the runs of the first gap sweeps): hyper_parameters = {"cfg": run config}, the RPN and sampler
thresholds then hard-coded, the backbone's feature choice called `kind`, the classes those of the run's
training annotations. Converted torchvision weights are format 2.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any

from maskrcnn.checkpoints import CheckpointError, read_checkpoint
from maskrcnn.data.coco import load_json
from maskrcnn.lightning_module import CHECKPOINT_FORMAT, DetectorModule

# The values format-1 checkpoints were trained with, hard-coded then (maskrcnn/model.py at commit 56fd384).
_V1_RPN = {"fg_iou_thresh": 0.7, "bg_iou_thresh": 0.3, "positive_fraction": 0.5, "nms_thresh": 0.7,
           "score_thresh": 0.0, "box_coder_weights": [1.0, 1.0, 1.0, 1.0]}  # fmt: skip
_V1_ROI_HEADS = {"fg_iou_thresh": 0.5, "bg_iou_thresh": 0.5, "box_coder_weights": [10.0, 10.0, 5.0, 5.0],
                 "min_box_size": 0.01}  # fmt: skip


def load_detector(path: str | os.PathLike) -> tuple[DetectorModule, dict[str, Any]]:
    """(the checkpoint's DetectorModule with its weights, in eval mode; the run config it was trained with).

    The backbone is built without its pretrained weights (every weight comes from the checkpoint, and a
    download would fail offline).
    """
    path = Path(path)
    checkpoint = read_checkpoint(path)
    hparams = checkpoint.get("hyper_parameters")
    if not isinstance(hparams, dict) or "state_dict" not in checkpoint:
        raise CheckpointError(
            f"{path} is not a checkpoint written by train.py (no hyper_parameters/state_dict). "
            "torchvision Mask R-CNN weights convert with: python -m maskrcnn.torchvision_weights SRC.pth DST.ckpt"
        )
    version = checkpoint.get("checkpoint_format", 1 if "cfg" in hparams else None)
    if version == 1:
        hparams = _upgrade_format_1(hparams, path)
    elif version != CHECKPOINT_FORMAT:
        raise CheckpointError(
            f"{path}: checkpoint format {version!r} (written by pytorch-lightning "
            f"{checkpoint.get('pytorch-lightning_version', '?')}); this code reads formats 1 to {CHECKPOINT_FORMAT}"
        )
    hparams = copy.deepcopy(hparams)
    hparams["model"]["backbone"]["weights"] = None
    hparams["roi"] = upgrade_roi(hparams["roi"])
    if isinstance(hparams.get("run_config"), dict) and "roi" in hparams["run_config"]:
        hparams["run_config"]["roi"] = upgrade_roi(hparams["run_config"]["roi"])
    module = DetectorModule(**hparams)
    try:
        module.load_state_dict(checkpoint["state_dict"])
    except RuntimeError as e:  # missing or unexpected keys, wrong shapes
        raise CheckpointError(f"{path}: its weights do not fit the model its config builds today: {e}") from e
    return module.eval(), hparams["run_config"]


def upgrade_roi(roi: dict[str, Any]) -> dict[str, Any]:
    """A `roi` config of the code before the extractor contract (issue 23) -> today's.

    It had `impl: ours | torchvision` on every built-in variant. torchvision's op is now its own class
    (roi_heads.TorchvisionRoIOp), and a run of it was and stays named `<variant>-torchvision`.
    """
    if "impl" not in roi:
        return roi
    upgraded = {key: value for key, value in roi.items() if key != "impl"}
    if roi["impl"] == "torchvision":
        upgraded["_target_"] = "roi_heads.TorchvisionRoIOp"
        upgraded["name"] = f"{roi['name']}-torchvision"
    return upgraded


def _upgrade_format_1(hparams: dict[str, Any], path: Path) -> dict[str, Any]:
    """Format-1 hyper-parameters ({"cfg": run config}) -> DetectorModule's arguments."""
    cfg = hparams["cfg"]
    model = copy.deepcopy(cfg["model"])
    backbone = model["backbone"]
    backbone["features"] = backbone.pop("kind")
    backbone["_target_"] = "maskrcnn.backbones.build_backbone"
    model["rpn"] = {**_V1_RPN, **model["rpn"]}
    model["roi_heads"] = {**_V1_ROI_HEADS, **model["roi_heads"]}
    annotations = cfg["data"]["module"]["train_annotations"]
    classes = hparams.get("classes")
    if classes is None:
        if not Path(annotations).is_file():
            raise CheckpointError(
                f"{path}: a format-1 checkpoint, whose classes are those of its training annotations "
                f"{annotations}, which no longer exist"
            )
        classes = sorted(({"id": int(c["id"]), "name": c["name"]} for c in load_json(annotations)["categories"]),
                         key=lambda c: c["id"])  # fmt: skip
    optim = {**cfg["optim"], "optimizer": {"_target_": "torch.optim.SGD", "_partial_": True,
                                           "momentum": cfg["optim"]["momentum"]}}  # fmt: skip
    return {
        "model": model,
        "roi": upgrade_roi({"_target_": "roi_heads.RoIOp", **cfg["roi"]}),
        "classes": classes,
        "image_min_size": cfg["data"]["image_min_size"],
        "image_max_size": cfg["data"]["image_max_size"],
        "optim": optim,
        "run_config": cfg,
    }
