"""python -m maskrcnn.predict: a folder of assorted real-world files -> one drawing per good image, COCO results
that pycocotools loads, bad files named (skipped and counted, or an error after the outputs so far)."""

import contextlib
import io
import json
import logging
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import SMOKE_CLASSES
from PIL import Image
from pycocotools.coco import COCO

from maskrcnn.config import compose_config
from maskrcnn.data.image_file import UnreadableImageError
from maskrcnn.predict import PredictInputError, drawing_names, list_inputs, predict

REPO = Path(__file__).resolve().parents[1]
# Non-contiguous ids: predictions.json must carry the class id, not the model's label 1..K.
CLASSES = SMOKE_CLASSES
RECORD_KEYS = {"image_id", "category_id", "bbox", "score", "segmentation"}

# name -> displayed (width, height) of the good files; the EXIF-rotated photo is stored 60x40 and shown 40x60.
GOOD = {
    "depth16.png": (64, 32),
    "gray.png": (50, 30),
    "large.jpg": (3000, 2000),
    "photo.jpg": (40, 60),
    "rgba.png": (48, 32),
    "tiny.png": (8, 8),
}
BAD = {  # name -> what the message says
    "corrupt.jpg": "not a readable image (OSError",
    "notes.txt": "not a readable image (UnidentifiedImageError",
    "sliver.png": "3000x2 px is too elongated for this model",
}


def _pattern(h, w):
    """UInt8[H, W, 3]: smooth colour ramps (they compress to little, even at 3000x2000)."""
    y, x = np.mgrid[0:h, 0:w]
    return np.stack([x * 255 // max(w - 1, 1), y * 255 // max(h - 1, 1), (x + y) % 256], axis=2).astype(np.uint8)


def write_assorted_folder(folder: Path) -> None:
    """Every kind of file the predictor must handle: GOOD's images and BAD's non-images."""
    folder.mkdir(parents=True)
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: shown turned 90 degrees clockwise
    Image.fromarray(_pattern(40, 60)).save(folder / "photo.jpg", exif=exif)
    Image.fromarray(_pattern(30, 50)[:, :, 0]).save(folder / "gray.png")  # mode L
    rgba = np.concatenate([_pattern(32, 48), np.full((32, 48, 1), 255, np.uint8)], axis=2)
    rgba[:, :24, 3] = 0  # left half transparent
    Image.fromarray(rgba).save(folder / "rgba.png")
    Image.fromarray(_pattern(32, 64)[:, :, 0].astype(np.uint16) * 257).save(folder / "depth16.png")  # I;16
    Image.fromarray(_pattern(8, 8)).save(folder / "tiny.png")
    Image.fromarray(_pattern(2000, 3000)).save(folder / "large.jpg")
    Image.fromarray(_pattern(2, 3000)).save(folder / "sliver.png")  # readable, but 0 px high once resized
    _pattern_jpeg = (folder / "photo.jpg").read_bytes()
    (folder / "corrupt.jpg").write_bytes(_pattern_jpeg[: len(_pattern_jpeg) // 2])  # truncated
    (folder / "notes.txt").write_text("a text file, not an image\n")


@pytest.fixture(scope="module")
def checkpoint(untrained_checkpoint):
    return untrained_checkpoint


def _predict_cfg(checkpoint, input, output, *overrides):
    # score_thresh=0: random weights score low, and every detection should reach the files.
    overrides = [f"ckpt_path={checkpoint}", f"input={input}", f"output={output}", "score_thresh=0.0", "device=cpu",
                 *overrides]  # fmt: skip
    return compose_config("predict", overrides)


@pytest.fixture(scope="module")
def skip_run(tmp_path_factory, checkpoint):
    """(output dir, summary, the logged warnings) of on_bad_file=skip over the assorted folder."""
    root = tmp_path_factory.mktemp("skip")
    write_assorted_folder(root / "in")
    cfg = _predict_cfg(checkpoint, root / "in", root / "out", "on_bad_file=skip", "batch_size=2")
    with _captured_warnings() as messages:
        summary = predict(cfg)
    return root / "out", summary, messages


@contextlib.contextmanager
def _captured_warnings():
    """The messages logged at WARNING by maskrcnn.predict (caplog is function-scoped; skip_run is not)."""
    messages = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = lambda record: messages.append(record.getMessage())
    logger = logging.getLogger("maskrcnn.predict")
    logger.addHandler(handler)
    try:
        yield messages
    finally:
        logger.removeHandler(handler)


def test_one_drawing_per_good_image_at_its_displayed_size(skip_run):
    out, _, _ = skip_run
    drawn = sorted(p.relative_to(out / "drawn").as_posix() for p in (out / "drawn").rglob("*"))
    assert drawn == sorted(name.rsplit(".", 1)[0] + ".png" for name in GOOD)
    for name, size in GOOD.items():
        with Image.open(out / "drawn" / (name.rsplit(".", 1)[0] + ".png")) as im:
            assert (im.size, im.mode) == (size, "RGB"), name


def test_predictions_json_schema_and_pycocotools_loads_it(skip_run):
    out, summary, _ = skip_run
    records = json.loads((out / "predictions.json").read_text())
    index = json.loads((out / "images.json").read_text())
    names = sorted([*GOOD, *BAD])
    assert index["categories"] == CLASSES
    assert index["images"] == [
        {"id": names.index(name) + 1, "file_name": name, "width": w, "height": h} for name, (w, h) in GOOD.items()
    ], "ids are 1-based positions in the sorted input list, bad files included"
    sizes = {im["id"]: [im["height"], im["width"]] for im in index["images"]}
    assert len(records) == summary["detections"] > 0
    for r in records:
        assert set(r) == RECORD_KEYS
        assert r["image_id"] in sizes and r["category_id"] in {3, 7, 9}
        assert len(r["bbox"]) == 4 and r["bbox"][2] >= 0 and r["bbox"][3] >= 0 and 0 <= r["score"] <= 1
        assert r["segmentation"]["size"] == sizes[r["image_id"]] and isinstance(r["segmentation"]["counts"], str)
    assert max(sum(r["image_id"] == i for r in records) for i in sizes) <= 5, "detections_per_img from the ckpt"

    with contextlib.redirect_stdout(io.StringIO()):
        results = COCO(str(out / "images.json")).loadRes(str(out / "predictions.json"))
    assert len(results.getAnnIds()) == len(records)
    assert sorted(results.getImgIds()) == sorted(sizes)


def test_skip_warns_naming_each_bad_file_and_counts_them(skip_run):
    out, summary, messages = skip_run
    folder = out.parent / "in"
    for name, reason in BAD.items():
        assert sum(f"{folder / name}: {reason}" in m for m in messages) == 1, (name, messages)
    assert len(messages) == len(BAD) + 1 and messages[-1] == f"3 of 9 files skipped (listed in {out / 'summary.json'})"
    assert summary == json.loads((out / "summary.json").read_text())
    assert (summary["files"], summary["images"], summary["error"]) == (len(GOOD) + len(BAD), len(GOOD), None)
    assert sorted(s["file"] for s in summary["skipped"]) == sorted(str(folder / n) for n in BAD)


def test_error_names_the_file_after_writing_the_outputs_before_it(tmp_path, checkpoint):
    """a.png and b.png are read into one batch before c.txt fails: both are predicted and written, d.png never."""
    folder = tmp_path / "in"
    folder.mkdir()
    for name in ("a.png", "b.png", "d.png"):
        Image.fromarray(_pattern(24, 32)).save(folder / name)
    (folder / "c.txt").write_text("not an image")
    cfg = _predict_cfg(checkpoint, folder, tmp_path / "out", "batch_size=4")
    with pytest.raises(UnreadableImageError, match="^" + re.escape(f"{folder / 'c.txt'}: not a readable image")):
        predict(cfg)
    out = tmp_path / "out"
    assert sorted(p.name for p in (out / "drawn").iterdir()) == ["a.png", "b.png"]
    assert [im["file_name"] for im in json.loads((out / "images.json").read_text())["images"]] == ["a.png", "b.png"]
    assert {r["image_id"] for r in json.loads((out / "predictions.json").read_text())} == {1, 2}
    summary = json.loads((out / "summary.json").read_text())
    assert summary["images"] == 2 and summary["error"].startswith(f"UnreadableImageError: {folder / 'c.txt'}")


def test_a_batch_holds_only_images_of_one_size(tmp_path, checkpoint, monkeypatch):
    """Sizes A A B A at batch_size=4: the model sees [A, A], [B], [A] (padding would change the features)."""
    folder = tmp_path / "in"
    folder.mkdir()
    for name, (h, w) in {"1.png": (24, 32), "2.png": (24, 32), "3.png": (32, 24), "4.png": (24, 32)}.items():
        Image.fromarray(_pattern(h, w)).save(folder / name)
    seen = []
    from maskrcnn.detector import MaskRCNN

    forward = MaskRCNN.forward
    monkeypatch.setattr(MaskRCNN, "forward", lambda self, images: seen.append([tuple(i.shape) for i in images])
                        or forward(self, images))  # fmt: skip
    predict(_predict_cfg(checkpoint, folder, tmp_path / "out", "batch_size=4"))
    a, b = (3, 24, 32), (3, 32, 24)
    assert seen == [[a, a], [b], [a]]


def test_input_names_and_globs(tmp_path):
    (tmp_path / "x" / "deep").mkdir(parents=True)
    for name in ("x/a.jpg", "x/a.png", "x/b.jpg", "x/deep/c.jpg", "x/.hidden.png"):
        (tmp_path / name).write_bytes(b"")
    files, root = list_inputs(str(tmp_path / "x"))
    assert root == tmp_path / "x" and [f.name for f in files] == ["a.jpg", "a.png", "b.jpg"], "no subfolders, dotfiles"
    assert drawing_names(files, root) == ["a.jpg.png", "a.png.png", "b.png"], "suffix kept where names would clash"
    files, root = list_inputs(str(tmp_path / "**" / "*.jpg"))
    assert root == tmp_path / "x" and drawing_names(files, root) == ["a.png", "b.png", "deep/c.png"]
    for spec, message in [
        (tmp_path / "nothing", "no such file or folder"),
        (tmp_path / "*.gif", "no file matches this pattern"),
        (tmp_path / "x" / "deep" / "c.jpg", None),
    ]:
        if message is None:
            assert list_inputs(str(spec)) == ([spec], spec.parent)
        else:
            with pytest.raises(PredictInputError, match=re.escape(f"input='{spec}': {message}")):
                list_inputs(str(spec))


@pytest.mark.parametrize(
    "override, message",
    [
        ("on_bad_file=ignore", "on_bad_file='ignore': must be one of error, skip"),
        ("score_thresh=1.5", "score_thresh=1.5: must be in"),
        ("batch_size=0", "batch_size=0: must be >= 1"),
        ("device=tpu", "device='tpu': not a device"),
    ],
)
def test_bad_settings_are_named(tmp_path, override, message):
    """Refused before the checkpoint is read (there is none here)."""
    (tmp_path / "a.png").write_bytes(b"")
    cfg = _predict_cfg(tmp_path / "none.ckpt", tmp_path, tmp_path / "out", override)
    with pytest.raises(PredictInputError, match=re.escape(message)):
        predict(cfg)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message when no GPU is visible")
def test_cuda_without_a_gpu_is_named(tmp_path):
    (tmp_path / "a.png").write_bytes(b"")
    cfg = _predict_cfg(tmp_path / "none.ckpt", tmp_path, tmp_path / "out", "device=cuda")
    with pytest.raises(PredictInputError, match="device='cuda': no CUDA device is visible"):
        predict(cfg)


def test_cli_error_names_the_file_without_a_traceback(tmp_path, checkpoint):
    """The real command line: a one-line error naming the text file, no Python traceback, and the image
    before it drawn and in a predictions.json that pycocotools loads; Hydra's config beside the outputs."""
    folder = tmp_path / "in"
    folder.mkdir()
    Image.fromarray(_pattern(24, 32)).save(folder / "a.png")
    (folder / "b.txt").write_text("not an image")
    out = tmp_path / "out"
    command = [sys.executable, "-m", "maskrcnn.predict", f"ckpt_path={checkpoint}", f"input={folder}",
               f"output={out}", "score_thresh=0", "device=cpu"]  # fmt: skip
    proc = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1, proc.stderr
    assert f"error: {folder / 'b.txt'}: not a readable image (UnidentifiedImageError" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert (out / "drawn" / "a.png").is_file() and (out / ".hydra" / "config.yaml").is_file()
    with contextlib.redirect_stdout(io.StringIO()):
        results = COCO(str(out / "images.json")).loadRes(str(out / "predictions.json"))
    assert results.getImgIds() == [1]
