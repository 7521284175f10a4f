"""Predict on your own images: python -m maskrcnn.predict ckpt_path=... input=<image | folder | glob> output=<dir>
(installed: roi-gap-predict ckpt_path=... input=... output=...)

Writes, under `output`:
    drawn/<name>.png   each readable image with its detections drawn (masks, boxes, class names, scores), at the
                       image's own size (EXIF orientation applied); <name> is the input's path relative to the
                       input folder (for a glob: the matches' common folder) with .png for its suffix, or with
                       .png appended where two inputs would share a name (a.jpg and a.png -> a.jpg.png, a.png.png)
    predictions.json   COCO results for all of them: image_id, category_id (the checkpoint's class id), bbox
                       [x, y, w, h], score and segmentation (RLE), one record per detection
    images.json        the COCO `images` (id = 1-based position in the sorted input list, file_name relative as
                       above, width, height) and `categories` that predictions.json refers to, so that
                       COCO("images.json").loadRes("predictions.json") works
    summary.json       counts, the skipped files with their reasons, the settings, and the error that stopped
                       the run if one did
The three JSON files are written when the run ends, however it ends (an error, Ctrl-C), for the images done.

Shapes: N images in a batch, D detections of an image of H x W pixels.
"""

from __future__ import annotations

import glob
import json
import logging
import math
import os
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig
from PIL import Image
from torch import Tensor
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from maskrcnn.checkpoints import CheckpointError
from maskrcnn.coco_eval import detections_to_coco
from maskrcnn.data.coco import BadDataError
from maskrcnn.data.image_file import read_image
from maskrcnn.roi_config import RoIConfigError
from maskrcnn.trained_model import load_detector
from maskrcnn.viz import draw_prediction
from roi_heads import ExtractorError

log = logging.getLogger("maskrcnn.predict")  # not __name__, which is __main__ under python -m
ON_BAD_FILE = ("error", "skip")


class PredictInputError(ValueError):
    """A predict setting (input=, device=, ...) that cannot work; the message names the key."""


class UnusableImageError(BadDataError):
    """A readable image this model cannot take (its resize would make it 0 px wide)."""


def predict(cfg: DictConfig) -> dict[str, Any]:
    """Predicts on every file of `cfg.input` and writes the outputs listed in the module docstring.

    -> the summary (as summary.json). A bad file raises its BadDataError (on_bad_file=error) once the images
    before it are written, or is skipped with a warning naming it (on_bad_file=skip).
    """
    _check_settings(cfg)
    files, root = list_inputs(str(cfg.input))
    device = resolve_device(str(cfg.device))
    module, _ = load_detector(cfg.ckpt_path)
    model = module.model.to(device)
    # Applied in the model's post-processing, before the masks are pasted at full resolution: a lower-scoring
    # detection would cost an H x W float mask only to be left out of the pictures and the JSON.
    model.roi_heads.score_thresh = float(cfg.score_thresh)
    if cfg.detections_per_img is not None:
        model.roi_heads.detections_per_img = int(cfg.detections_per_img)
    output = Path(cfg.output)
    classes = module.hparams.classes
    names = drawing_names(files, root)
    skipped: list[dict[str, str]] = []
    records: list[dict] = []
    images: list[dict] = []
    error = None
    try:
        # Log lines (a skipped file) go above the progress bar instead of through it.
        with logging_redirect_tqdm(), tqdm(total=len(files), desc="predict", unit="image") as bar:
            batches = _batches(files, int(cfg.batch_size), model.transform, cfg.on_bad_file, skipped, bar)
            for batch in batches:
                with torch.inference_mode():
                    detections = model([image.to(device) for _, image in batch])
                for (index, image), found in zip(batch, detections, strict=True):
                    found = {key: value.cpu() for key, value in found.items()}
                    _draw(image, found, [c["name"] for c in classes], output / "drawn" / names[index])
                    image_id = index + 1
                    images.append({"id": image_id, "file_name": files[index].relative_to(root).as_posix(),
                                   "width": image.shape[-1], "height": image.shape[-2]})  # fmt: skip
                    records += _coco_records(image_id, found, classes)
                    bar.update(1)
    except BaseException as e:
        error = f"{type(e).__name__}: {e}"
        raise
    finally:
        summary = {
            "ckpt_path": str(Path(cfg.ckpt_path).resolve()),
            "input": str(cfg.input),
            "input_root": str(root.resolve()),
            "files": len(files),
            "images": len(images),
            "detections": len(records),
            "skipped": skipped,
            "error": error,
            "score_thresh": float(cfg.score_thresh),
            "device": str(device),
        }
        _write_outputs(output, records, images, classes, summary)
    log.info("%d images, %d detections -> %s", len(images), len(records), output)
    if skipped:
        log.warning("%d of %d files skipped (listed in %s)", len(skipped), len(files), output / "summary.json")
    return summary


def list_inputs(spec: str) -> tuple[list[Path], Path]:
    """input= -> (the files, sorted; the folder their output names are relative to).

    An image file; a folder (its files, not its subfolders, dotfiles left out); or a glob pattern (`**` spans
    folders, quote it for the shell). Every file is tried as an image, whatever its extension.
    """
    path = Path(spec).expanduser()
    if path.is_file():
        return [path], path.parent
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.is_file() and not p.name.startswith("."))
        if not files:
            raise PredictInputError(f"input={spec!r}: the folder holds no files")
        return files, path
    if not any(c in spec for c in "*?["):
        raise PredictInputError(f"input={spec!r}: no such file or folder")
    files = sorted(Path(p) for p in glob.glob(os.path.expanduser(spec), recursive=True) if Path(p).is_file())
    if not files:
        raise PredictInputError(f"input={spec!r}: no file matches this pattern")
    return files, Path(os.path.commonpath([p.parent for p in files]))


def drawing_names(files: list[Path], root: Path) -> list[str]:
    """Each file's drawing, relative to drawn/: its path under `root` with .png for its suffix, or with .png
    appended where that would give two files one name."""
    relative = [f.relative_to(root) for f in files]
    counts = Counter(r.with_suffix(".png") for r in relative)
    return [(r.with_suffix(".png") if counts[r.with_suffix(".png")] == 1 else r.with_name(r.name + ".png")).as_posix()
            for r in relative]  # fmt: skip


def resolve_device(name: str) -> torch.device:
    """auto (CUDA if visible, else CPU) | cpu | cuda | cuda:<index>."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as e:
        raise PredictInputError(f"device={name!r}: not a device (auto, cpu, cuda or cuda:<index>)") from e
    if device.type == "cuda" and not torch.cuda.is_available():
        raise PredictInputError(f"device={name!r}: no CUDA device is visible to torch; use device=cpu or auto")
    if device.type not in ("cpu", "cuda"):
        raise PredictInputError(f"device={name!r}: only cpu and cuda are supported")
    return device


def _check_settings(cfg: DictConfig) -> None:
    if cfg.on_bad_file not in ON_BAD_FILE:
        raise PredictInputError(f"on_bad_file={cfg.on_bad_file!r}: must be one of {', '.join(ON_BAD_FILE)}")
    if not 0.0 <= float(cfg.score_thresh) <= 1.0:
        raise PredictInputError(f"score_thresh={cfg.score_thresh}: must be in [0, 1]")
    if int(cfg.batch_size) < 1:
        raise PredictInputError(f"batch_size={cfg.batch_size}: must be >= 1")
    if cfg.detections_per_img is not None and int(cfg.detections_per_img) < 1:
        raise PredictInputError(f"detections_per_img={cfg.detections_per_img}: must be >= 1 (or null)")


def _batches(
    files: list[Path], batch_size: int, transform: Any, on_bad_file: str, skipped: list[dict], bar: tqdm
) -> Iterator[list[tuple[int, Tensor]]]:
    """Consecutive readable images as [(index into files, Float[3, H, W])], at most batch_size, all of one size.

    One size per batch, as in evaluation: the model pads a batch to its largest image, which changes the
    features near the border, so mixed sizes would make the detections depend on batch_size. A bad file is
    logged and appended to `skipped` (on_bad_file=skip), or raised after the batch read before it
    (on_bad_file=error).
    """
    batch: list[tuple[int, Tensor]] = []
    for index, path in enumerate(files):
        try:
            image = read_image(path)
            _check_resizable(path, image, transform.min_size[-1], transform.max_size)
        except BadDataError as e:
            if on_bad_file == "error":
                if batch:
                    yield batch
                raise
            log.warning("skipped %s", e)
            skipped.append({"file": str(path), "error": str(e)})
            bar.update(1)
            continue
        if batch and (len(batch) == batch_size or batch[0][1].shape != image.shape):
            yield batch
            batch = []
        batch.append((index, image))
    if batch:
        yield batch


def _check_resizable(path: Path, image: Tensor, min_size: int, max_size: int) -> None:
    """The model's resize (GeneralizedRCNNTransform: short side to min_size, long side at most max_size) must
    leave both sides at least 1 px; it floors them, and interpolation to 0 px fails deep inside torch."""
    h, w = image.shape[-2:]
    scale = min(min_size / min(h, w), max_size / max(h, w))
    if math.floor(min(h, w) * scale) < 1:
        raise UnusableImageError(
            f"{path}: {w}x{h} px is too elongated for this model, whose resize (short side {min_size} px, long "
            f"side at most {max_size} px) would make it 0 px wide"
        )


def _draw(image: Tensor, detections: dict[str, Tensor], class_names: list[str], path: Path) -> None:
    """Writes the image with `detections` drawn to `path` (PNG); boxes 1 px wide per 500 px of the long side,
    so that they stay visible on a large photo."""
    width = max(1, round(max(image.shape[-2:]) / 500))
    canvas = draw_prediction(image, detections, class_names, score_thresh=0.0, width=width)  # already filtered
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(canvas.permute(1, 2, 0).numpy()).save(path)


def _coco_records(image_id: int, detections: dict[str, Tensor], classes: list[dict]) -> list[dict]:
    """One image's detections -> COCO results with both bbox and segmentation (as detectron2 writes them)."""
    to_category = {label: c["id"] for label, c in enumerate(classes, start=1)}
    boxes, masks = detections_to_coco(image_id, detections, to_category)
    return [{**box, "segmentation": mask["segmentation"]} for box, mask in zip(boxes, masks, strict=True)]


def _write_outputs(output: Path, records: list[dict], images: list[dict], classes: list[dict], summary: dict) -> None:
    categories = [{"id": int(c["id"]), "name": c["name"]} for c in classes]
    _write_json(output / "predictions.json", records)
    _write_json(output / "images.json", {"images": images, "categories": categories})
    _write_json(output / "summary.json", summary)


def _write_json(path: Path, value: Any) -> None:
    """Through a temporary file and a rename, so an interrupted write leaves the previous file, not half of one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(value))
    os.replace(tmp, path)


def run(cfg: DictConfig) -> None:
    """The command (maskrcnn.cli.predict): predict(cfg), with a one-line error for a bad input or checkpoint."""
    try:
        predict(cfg)
    except (BadDataError, PredictInputError, CheckpointError, FileNotFoundError, ExtractorError, RoIConfigError) as e:
        # The message names the file and what is wrong with it; the stack inside PIL or torch.load adds
        # nothing a user can act on.
        message = f"error: {e}"
        if isinstance(e, BadDataError):
            message += f"\n(the outputs of the files before it are in {cfg.output}; on_bad_file=skip skips such files)"
        raise SystemExit(message) from None


def main() -> None:
    """python -m maskrcnn.predict: the Hydra app over configs/predict.yaml (maskrcnn.cli)."""
    from maskrcnn.cli import predict as command

    command()


if __name__ == "__main__":
    main()
