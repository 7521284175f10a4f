"""maskrcnn.data.image_file.read_image: every kind of file a user may have -> Float[3, H, W] in [0, 1]."""

import re

import numpy as np
import pytest
import torch
from PIL import Image

from maskrcnn.data.image_file import UnreadableImageError, read_image

EXIF_ORIENTATION = 0x0112


def test_exif_orientation_is_applied(tmp_path):
    """Orientation 6 (stored on its side, shown turned 90 degrees clockwise): the stored top-left corner is
    shown top-right, and the displayed size is H x W swapped."""
    stored = np.zeros((40, 60, 3), np.uint8)  # H=40, W=60
    stored[:20, :30] = (255, 0, 0)  # top-left quadrant red
    exif = Image.Exif()
    exif[EXIF_ORIENTATION] = 6
    Image.fromarray(stored).save(tmp_path / "photo.jpg", exif=exif, quality=95)
    image = read_image(tmp_path / "photo.jpg")
    assert image.shape == (3, 60, 40)
    assert image[:, 10, 30].tolist() == pytest.approx([1.0, 0.0, 0.0], abs=0.05), "red is now top-right"
    assert image[:, 10, 10].tolist() == pytest.approx([0.0, 0.0, 0.0], abs=0.05)


def test_16bit_png_is_scaled_by_its_range_not_clipped(tmp_path):
    values = np.array([[0, 1000, 32768, 65535]], np.uint16)
    Image.fromarray(values).save(tmp_path / "depth.png")
    with Image.open(tmp_path / "depth.png") as im:
        assert im.mode == "I;16", "the file really is 16-bit"
    image = read_image(tmp_path / "depth.png")
    assert image.shape == (3, 1, 4) and image.dtype == torch.float32
    expected = torch.tensor([0, 1000, 32768, 65535]) / 65535
    assert torch.allclose(image, expected.expand(3, 1, 4)), "all 3 channels equal, scaled by 65535"


def test_grayscale_becomes_three_equal_channels(tmp_path):
    Image.fromarray(np.array([[0, 51, 255]], np.uint8), mode="L").save(tmp_path / "gray.png")
    image = read_image(tmp_path / "gray.png")
    assert torch.allclose(image, torch.tensor([0.0, 0.2, 1.0]).expand(3, 1, 3))


@pytest.mark.parametrize("mode", ["RGBA", "LA", "P"])
def test_transparency_is_composited_over_white(tmp_path, mode):
    """A transparent pixel shows white, whatever colour is stored under it; an opaque one keeps its colour;
    half-transparent black is mid-grey."""
    rgba = np.array([[[0, 0, 0, 0], [0, 0, 0, 255], [0, 0, 0, 128]]], np.uint8)
    image = Image.fromarray(rgba, mode="RGBA")
    if mode == "P":  # a palette with one transparent colour (no partial alpha in a GIF-style palette)
        image = Image.fromarray(np.array([[0, 1]], np.uint8), mode="P")
        image.putpalette([0, 0, 0, 0, 0, 0])
        image.info["transparency"] = 0
    else:
        image = image.convert(mode)
    image.save(tmp_path / "alpha.png")
    out = read_image(tmp_path / "alpha.png")
    assert out[:, 0, 0].tolist() == [1.0, 1.0, 1.0]
    assert out[:, 0, 1].tolist() == [0.0, 0.0, 0.0]
    if mode != "P":
        assert out[:, 0, 2].tolist() == pytest.approx([127 / 255] * 3, abs=1 / 255)


def _truncated_jpeg(path):
    Image.fromarray(np.full((64, 64, 3), 128, np.uint8)).save(path.with_suffix(".tmp.jpg"))
    data = path.with_suffix(".tmp.jpg").read_bytes()
    path.write_bytes(data[: len(data) // 2])


@pytest.mark.parametrize(
    "name, write, reason",
    [
        ("notes.txt", lambda p: p.write_text("not an image"), "UnidentifiedImageError"),
        ("empty.png", lambda p: p.write_bytes(b""), "UnidentifiedImageError"),
        ("cut.jpg", _truncated_jpeg, "OSError"),
    ],
)
def test_unreadable_files_are_named_with_pils_reason(tmp_path, name, write, reason):
    path = tmp_path / name
    write(path)
    with pytest.raises(UnreadableImageError, match="^" + re.escape(f"{path}: not a readable image ({reason}: ")):
        read_image(path)
