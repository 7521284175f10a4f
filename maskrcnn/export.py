"""Export a trained detector to ONNX: python -m maskrcnn.export (installed: roi-gap-export) ckpt_path=... [output=...]

The ONNX model (torch.onnx's TorchScript exporter, dynamo=False, opset 17 by default) runs the whole detector
in inference mode on one image:

    input   image   Float32[3, H, W], RGB in [0, 1], any H and W (the model resizes it as in PyTorch)
    outputs boxes   Float32[D, 4]   (x1, y1, x2, y2) in the input image's pixels
            labels  Int64[D]        1..K, the index into the `roi_gap.classes` metadata entry, plus 1
            scores  Float32[D]      best first; those above score_thresh, at most detections_per_img
            masks   Float32[D, 1, H, W]  mask probabilities pasted at the input's size (binarize at 0.5)

which is MaskRCNN's output for [image] in PyTorch (maskrcnn/export_model.py says how). The file's
metadata_props hold roi_gap.classes (JSON [{"id", "name"}] of labels 1..K), roi_gap.roi (the RoI variant),
roi_gap.score_thresh, roi_gap.detections_per_img and roi_gap.checkpoint.

RoI variants: align, align_legacy, align_adaptive and align_max export (ONNX RoiAlign, or our own max
subgraph: onnxruntime's RoiAlign max mode differs from ours), pool exports as ONNX MaxRoiPool, the
-torchvision variants as their ops do, warp and warp_avg are refused (no ONNX operator), a user's extractor
exports through its own `onnx_export_op()` (roi_heads/export_ops.py).

With check=true (the default) the file is run in onnxruntime on the export image and on one of another size,
and the command fails unless the detections equal PyTorch's (maskrcnn/export_check.py).
"""

from __future__ import annotations

import io
import json
import logging
import warnings
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig
from torch import Tensor

from maskrcnn.checkpoints import CheckpointError
from maskrcnn.data.coco import BadDataError
from maskrcnn.data.image_file import read_image
from maskrcnn.export_check import ExportCheckError, check_export
from maskrcnn.export_model import OUTPUT_NAMES, ExportableMaskRCNN
from maskrcnn.roi_config import RoIConfigError
from maskrcnn.trained_model import load_detector
from roi_heads import ExtractorError
from roi_heads.export_ops import ExportRefusedError

log = logging.getLogger("maskrcnn.export")  # not __name__, which is __main__ under python -m
MIN_OPSET = 16  # RoiAlign's coordinate_transformation_mode (half_pixel for aligned=True)
DYNAMIC_AXES = {
    "image": {1: "height", 2: "width"},
    "boxes": {0: "detections"},
    "labels": {0: "detections"},
    "scores": {0: "detections"},
    "masks": {0: "detections", 2: "height", 3: "width"},
}
# Warnings of torch.onnx's TorchScript exporter and of torchvision's traced code that say nothing about this
# model: the exporter's deprecation notice (its successor, dynamo=True, cannot export the detector: issue #25)
# and notes on how it translated operators that the check then runs.
_KNOWN_WARNINGS = (
    "You are using the legacy TorchScript-based ONNX export",
    "`torch.jit.script` is deprecated",
    "Constant folding - Only steps=1 can be constant folded",
    "Exporting aten::index operator of advanced indexing",
    "To copy construct from a tensor",
)


class ExportSetupError(ValueError):
    """An export setting (opset=, image=, ...) that cannot work, or a missing optional dependency."""


def export(cfg: DictConfig) -> dict[str, Any]:
    """Exports cfg.ckpt_path's detector to cfg.output; -> a summary (settings, file size, the check's results)."""
    if int(cfg.opset) < MIN_OPSET:
        raise ExportSetupError(f"opset={cfg.opset}: must be >= {MIN_OPSET} (RoiAlign's coordinate_transformation_mode)")
    onnx = _require("onnx")
    module, _ = load_detector(cfg.ckpt_path)
    model = module.model.eval()
    if cfg.score_thresh is not None:
        model.roi_heads.score_thresh = float(cfg.score_thresh)
    if cfg.detections_per_img is not None:
        model.roi_heads.detections_per_img = int(cfg.detections_per_img)
    roi = dict(module.hparams.roi)
    exportable = ExportableMaskRCNN(model, roi.get("name"))
    image = _export_image(cfg, model)
    output = Path(cfg.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    export_onnx(exportable, image, output, int(cfg.opset))

    proto = onnx.load(str(output))
    metadata = {
        "roi_gap.classes": json.dumps([{"id": c["id"], "name": c["name"]} for c in module.hparams.classes]),
        "roi_gap.roi": json.dumps({k: v for k, v in roi.items() if k != "_target_"}),
        "roi_gap.score_thresh": str(model.roi_heads.score_thresh),
        "roi_gap.detections_per_img": str(model.roi_heads.detections_per_img),
        "roi_gap.checkpoint": str(Path(cfg.ckpt_path).resolve()),
    }
    onnx.helper.set_model_props(proto, metadata)
    proto.doc_string = __doc__.split("\n\n")[1]
    onnx.save(proto, str(output))

    summary: dict[str, Any] = {
        "ckpt_path": str(Path(cfg.ckpt_path).resolve()),
        "output": str(output.resolve()),
        "bytes": output.stat().st_size,
        "opset": int(cfg.opset),
        "roi": roi.get("name"),
        "score_thresh": model.roi_heads.score_thresh,
        "detections_per_img": model.roi_heads.detections_per_img,
        "export_image_size": list(image.shape[-2:]),
        "check": None,
    }
    if cfg.check:
        _require("onnxruntime")
        summary["check"] = check_export(output, model, [image, _other_size(image)])
        for result in summary["check"]:
            log.info("check on a %s image: %s", "x".join(map(str, result["image_size"])), result)
        if not any(result["detections"] for result in summary["check"]):
            log.warning("the check compared no detections (none on its images); pass image=<a photo with objects>")
    log.info("wrote %s (%.1f MB)", output, summary["bytes"] / 1e6)
    return summary


def export_onnx(exportable: ExportableMaskRCNN, image: Tensor, path: str | Path, opset: int = 17) -> None:
    """Traces `exportable` on `image` into the ONNX file `path` (inputs/outputs as in the module docstring).

    The trace takes the path that `image` takes through the model: an image on which the RPN and the box head
    find nothing would still export (the graph's shapes are symbolic), but the check would compare nothing.
    """
    buffer = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        for message in _KNOWN_WARNINGS:
            warnings.filterwarnings("ignore", message=f".*{message}")
        # torchvision's detection code under tracing: its notes on sizes it reads are about code paths that the
        # traced graph does not depend on (the batch of one image, at least one proposal); ours still show.
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning, module="torchvision")
        torch.onnx.export(
            exportable,
            (image,),
            buffer,
            dynamo=False,
            opset_version=opset,
            input_names=["image"],
            output_names=list(OUTPUT_NAMES),
            dynamic_axes=DYNAMIC_AXES,
        )
    Path(path).write_bytes(buffer.getvalue())


def _export_image(cfg: DictConfig, model) -> Tensor:
    """The image= file, or a synthetic [H, W] image (image_size=, else the model's resize size, 4:3)."""
    if cfg.image is not None:
        return read_image(cfg.image)
    if cfg.image_size is not None:
        size = [int(s) for s in cfg.image_size]
        if len(size) != 2 or min(size) < 1:
            raise ExportSetupError(f"image_size={list(cfg.image_size)}: must be [H, W] of positive ints")
    else:
        side = int(model.transform.min_size[-1])
        size = [side, min(side * 4 // 3, int(model.transform.max_size))]
    return synthetic_image(*size)


def synthetic_image(height: int, width: int, seed: int = 0) -> Tensor:
    """Float[3, H, W]: flat-coloured rectangles on noise (deterministic), something for the detector to find."""
    g = torch.Generator().manual_seed(seed)
    image = torch.rand(3, height, width, generator=g) * 0.3
    for _ in range(6):
        h, w = (torch.rand(2, generator=g) * 0.4 + 0.1).tolist()
        y, x = (torch.rand(2, generator=g) * 0.5).tolist()
        rows = slice(int(y * height), int((y + h) * height) + 1)
        cols = slice(int(x * width), int((x + w) * width) + 1)
        image[:, rows, cols] = torch.rand(3, 1, 1, generator=g) * 0.7 + 0.3
    return image


def _other_size(image: Tensor) -> Tensor:
    """An image of another size than `image` (about its transpose), for the check."""
    h, w = image.shape[-2:]
    return synthetic_image(w + 3, max(h - 5, 8), seed=1)


def _require(name: str):
    try:
        return __import__(name)
    except ImportError as e:
        raise ExportSetupError(
            f"the export needs {name}, which is not installed: pip install onnx onnxruntime onnxscript "
            "(the `export` extra: pip install -e '.[export]')"
        ) from e


def run(cfg: DictConfig) -> None:
    """The command (maskrcnn.cli.export): export(cfg), with a one-line error for what a user can fix."""
    try:
        export(cfg)
    except (ExportRefusedError, ExportSetupError, ExportCheckError, CheckpointError, BadDataError,
            FileNotFoundError, ExtractorError, RoIConfigError) as e:  # fmt: skip
        # The message says what is wrong and what to do; the stack inside the exporter adds nothing to act on.
        raise SystemExit(f"error: {e}") from None


def main() -> None:
    """python -m maskrcnn.export: the Hydra app over configs/export.yaml (maskrcnn.cli)."""
    from maskrcnn.cli import export as command

    command()


if __name__ == "__main__":
    main()
