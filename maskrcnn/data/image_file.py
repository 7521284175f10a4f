"""One image file as a user has it (a photo, a scan, a screenshot) -> the detector's input, Float[3, H, W] in [0, 1].

What is done to each kind, and why:
- EXIF orientation is applied (`PIL.ImageOps.exif_transpose`): a phone photo comes out the way viewers show
  it, so H x W is the displayed size, not the stored one.
- 16-bit grayscale (PIL modes I;16*, and I, which PIL gives for 16-bit data in some formats) is divided by
  65535, the 16-bit range, so its tones survive; PIL's own convert("RGB") would clip it at 255. Values of a
  32-bit integer image above 65535 clip to 1. Float images (mode F) are taken as already in [0, 1] and clipped.
- Transparency (RGBA, LA, PA, a palette or grayscale with a transparent colour) is composited over white,
  as a viewer on a white page shows it: the colour stored under fully transparent pixels is often arbitrary
  (black, or leftovers of an editor), and dropping alpha would show it to the model.
- Everything else (grayscale, palette, 1-bit, CMYK, YCbCr, ...) goes through PIL's convert("RGB"); a
  grayscale image becomes three equal channels.
- Animated or multi-page files give their first frame.
"""

from __future__ import annotations

import os

import numpy as np
import torch
from PIL import Image, ImageOps

from maskrcnn.data.coco import BadDataError

_WHITE = (255, 255, 255, 255)


class UnreadableImageError(BadDataError):
    """A file that is not an image PIL can decode (unknown format, truncated or corrupt data, too many
    pixels); the message names the file and PIL's reason."""


def read_image(path: str | os.PathLike) -> torch.Tensor:
    """Float[3, H, W] in [0, 1], H x W as displayed (EXIF orientation applied); UnreadableImageError if it is
    not a decodable image."""
    try:
        with Image.open(path) as image:
            image.load()  # decode now, inside the try: truncated data only fails when the pixels are read
            image = ImageOps.exif_transpose(image)
    # OSError covers PIL's UnidentifiedImageError and truncated data, SyntaxError some plugins' corrupt chunks,
    # DecompressionBombError more pixels than Image.MAX_IMAGE_PIXELS allows.
    except (OSError, SyntaxError, Image.DecompressionBombError) as e:
        raise UnreadableImageError(f"{path}: not a readable image ({type(e).__name__}: {e})") from e
    return torch.from_numpy(_rgb_float(image)).permute(2, 0, 1)


def _rgb_float(image: Image.Image) -> np.ndarray:
    """A decoded PIL image -> Float32[H, W, 3] in [0, 1]."""
    if image.mode.startswith("I;16") or image.mode == "I":
        gray = np.asarray(image).astype(np.float32) / 65535.0
        return np.repeat(gray.clip(0.0, 1.0)[:, :, None], 3, axis=2)
    if image.mode == "F":
        return np.repeat(np.asarray(image, dtype=np.float32).clip(0.0, 1.0)[:, :, None], 3, axis=2)
    if image.has_transparency_data:
        image = Image.alpha_composite(Image.new("RGBA", image.size, _WHITE), image.convert("RGBA"))
    return np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
