"""Train-time augmentation on (image, target) pairs."""

from __future__ import annotations

import torch
from torch import Tensor


class RandomHorizontalFlip:
    """Flips image [3, H, W], boxes [M, 4] (xyxy) and masks [M, H, W] together with probability p.

    Draws from `generator` if given, else from torch's global RNG, which the DataLoader seeds per worker
    (Lightning's `seed_everything(workers=True)` makes that reproducible).
    """

    def __init__(self, p: float = 0.5, generator: torch.Generator | None = None) -> None:
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"flip probability must be in [0, 1], got {p}")
        self.p, self.generator = p, generator

    def __call__(self, image: Tensor, target: dict) -> tuple[Tensor, dict]:
        if self.p == 0.0 or torch.rand((), generator=self.generator) >= self.p:
            return image, target
        width = image.shape[-1]
        boxes = target["boxes"].clone()
        boxes[:, [0, 2]] = width - target["boxes"][:, [2, 0]]
        return image.flip(-1), {**target, "boxes": boxes, "masks": target["masks"].flip(-1)}
