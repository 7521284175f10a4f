"""torchvision's Mask R-CNN weights in our detector: key renaming, and a converter to an evaluate.py checkpoint.

    python -m maskrcnn.torchvision_weights maskrcnn_resnet50_fpn_coco-bf2d0c1e.pth weights/tv_maskrcnn_r50_fpn.ckpt
    python evaluate.py ckpt_path=weights/tv_maskrcnn_r50_fpn.ckpt data=coco

Our `r50_fpn` model is torchvision's `maskrcnn_resnet50_fpn` with the mask head's modules flattened, so its
state_dict loads after renaming 12 mask-branch keys. torchvision's RoIAlign is the unaligned one
(`roi=align_legacy`), and its released weights use FrozenBatchNorm (`model.backbone.norm=frozen_bn`).
The COCO weights predict 91 labels, torchvision's index of COCO's category ids (1..90, with 10 unused ids
named "N/A"): the checkpoint's classes keep that index, so label i is written as category_id i and nothing
is renormalised.
"""

from __future__ import annotations

import argparse
import os
import re
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from torch import Tensor
from torchvision.models.detection import MaskRCNN_ResNet50_FPN_Weights

from maskrcnn.checkpoints import CheckpointError, load_torch_file
from maskrcnn.config import compose_config
from maskrcnn.lightning_module import CHECKPOINT_FORMAT
from maskrcnn.training import build_module

# torchvision's MultiScaleRoIAlign: unaligned RoIAlign, averaging 2x2 samples per bin (configs/roi/align_legacy.yaml;
# align_legacy-torchvision is torchvision's op itself).
TORCHVISION_ROI = "align_legacy"
_MASK_CONV = re.compile(r"^roi_heads\.mask_head\.(\d+)\.0\.")
_RENAMES = {
    "roi_heads.mask_predictor.conv5_mask.": "roi_heads.mask_predictor.deconv.",
    "roi_heads.mask_predictor.mask_fcn_logits.": "roi_heads.mask_predictor.logits.",
}
# Keys only the v2 model (maskrcnn_resnet50_fpn_v2: conv box head, 2-conv RPN head, BatchNorm in the heads) has.
_V2_MARKERS = ("roi_heads.box_head.0.0.weight", "rpn.head.conv.1.0.weight")


def rename_torchvision_keys(state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
    """torchvision `maskrcnn_resnet50_fpn` state_dict -> ours (`model=r50_fpn`).

    roi_heads.mask_head.{i}.0.* -> roi_heads.mask_head.{2i}.* (our mask head interleaves conv and ReLU);
    mask_predictor.conv5_mask -> .deconv; mask_predictor.mask_fcn_logits -> .logits. Other keys are equal.
    """
    renamed = {}
    for key, value in state_dict.items():
        key = _MASK_CONV.sub(lambda m: f"roi_heads.mask_head.{2 * int(m.group(1))}.", key)
        for old, new in _RENAMES.items():
            key = key.replace(old, new)
        renamed[key] = value
    return renamed


def coco_classes(num_labels: int) -> list[dict[str, Any]]:
    """Classes of torchvision's COCO label index (91 labels: 0 background, i = COCO category id i)."""
    names = MaskRCNN_ResNet50_FPN_Weights.COCO_V1.meta["categories"]
    if num_labels == len(names):
        return [{"id": i, "name": name} for i, name in enumerate(names) if i > 0]
    return [{"id": i, "name": f"class_{i}"} for i in range(1, num_labels)]


def convert(
    src: str | os.PathLike,
    dst: str | os.PathLike,
    roi: str = TORCHVISION_ROI,
    min_size: int = 800,
    max_size: int = 1333,
    overrides: list[str] | None = None,
) -> Path:
    """A torchvision Mask R-CNN R50-FPN state_dict file -> a checkpoint that evaluate.py (and train.py) loads.

    roi: the `roi=` variant of the converted model; torchvision's RoIAlign by default, computed by our op
    (align_legacy-torchvision, torchvision's op itself, gives bit-identical outputs; ours agrees to float32
    rounding). min_size / max_size: the image resize (torchvision:
    800 / 1333). overrides: further Hydra overrides of the run config (e.g. model.rpn.post_nms_top_n_test=300).
    """
    src, dst = Path(src), Path(dst)
    state = load_torch_file(src, "torchvision weights")
    if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
        state = state["model"]  # torchvision's reference scripts save {"model": ..., "optimizer": ...}
    if not isinstance(state, dict) or "roi_heads.box_predictor.cls_score.weight" not in state:
        raise CheckpointError(f"{src}: not a torchvision Mask R-CNN state_dict (no roi_heads.box_predictor keys)")
    if any(marker in state for marker in _V2_MARKERS):
        raise CheckpointError(
            f"{src}: these are maskrcnn_resnet50_fpn_v2 weights, whose heads (a 4-conv + 1-fc box head with "
            "normalisation, a 2-conv RPN head, normalised mask convs) are not our r50_fpn architecture; "
            "only maskrcnn_resnet50_fpn (v1) weights convert"
        )
    num_labels = state["roi_heads.box_predictor.cls_score.weight"].shape[0]
    cfg = compose_config(
        "train",
        [
            "model=r50_fpn",
            "model.backbone.norm=frozen_bn",
            f"roi={roi}",
            "data=coco",
            f"data.image_min_size={min_size}",
            f"data.image_max_size={max_size}",
            f"paths.output_dir={dst.parent}",
            *(overrides or []),
        ],
    )
    module = build_module(cfg, coco_classes(num_labels))
    try:
        missing, unexpected = module.model.load_state_dict(rename_torchvision_keys(state), strict=False)
    except RuntimeError as e:  # shape mismatches
        raise CheckpointError(f"{src}: does not fit torchvision's maskrcnn_resnet50_fpn: {e}") from e
    if missing or unexpected:
        raise CheckpointError(
            f"{src}: does not fit torchvision's maskrcnn_resnet50_fpn: missing {missing[:5]}, "
            f"unexpected {unexpected[:5]}"
        )
    checkpoint = {
        "state_dict": module.state_dict(),
        "hyper_parameters": dict(module.hparams),
        "checkpoint_format": CHECKPOINT_FORMAT,
        "global_step": 0,
        "epoch": 0,
        "pytorch-lightning_version": pl.__version__,
        "converted_from": str(src.resolve()),
    }
    dst.parent.mkdir(parents=True, exist_ok=True)
    torch.save(checkpoint, dst)
    return dst


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("src", help="torchvision state_dict file, e.g. maskrcnn_resnet50_fpn_coco-bf2d0c1e.pth")
    parser.add_argument("dst", help="checkpoint to write, for evaluate.py ckpt_path=...")
    parser.add_argument("--roi", default=TORCHVISION_ROI,
                        help="RoI variant (default: torchvision's RoIAlign, by our op; align_legacy-torchvision: "
                             "torchvision's op)")
    parser.add_argument("--min-size", type=int, default=800)
    parser.add_argument("--max-size", type=int, default=1333)
    parser.add_argument("overrides", nargs="*", help="Hydra overrides of the run config, e.g. model.rpn.nms_thresh=0.6")
    args = parser.parse_args(argv)
    dst = convert(args.src, args.dst, args.roi, args.min_size, args.max_size, args.overrides)
    print(f"wrote {dst}: python evaluate.py ckpt_path={dst} data=coco")


if __name__ == "__main__":
    main()
