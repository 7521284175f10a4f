"""Train-time augmentation on (image, target) pairs, keyed so that every draw is reproducible.

An augmentation's randomness comes from a generator seeded by (seed, epoch, image index), not from a
stream: the result does not depend on the number of workers, on prefetching, or on where a run was
resumed, which is what makes a killed-and-resumed run identical to a straight one.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

Transform = Callable[[Tensor, dict, torch.Generator], tuple[Tensor, dict]]


class RandomHorizontalFlip:
    """Flips image [3, H, W], boxes [M, 4] and crowd_boxes [C, 4] (xyxy) and masks [M, H, W] together with
    probability p."""

    def __init__(self, p: float = 0.5) -> None:
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"flip probability must be in [0, 1], got {p}")
        self.p = p

    def __call__(self, image: Tensor, target: dict, generator: torch.Generator) -> tuple[Tensor, dict]:
        if self.p == 0.0 or torch.rand((), generator=generator) >= self.p:
            return image, target
        width = image.shape[-1]
        flipped = {key: _flip_boxes(target[key], width) for key in ("boxes", "crowd_boxes") if key in target}
        return image.flip(-1), {**target, **flipped, "masks": target["masks"].flip(-1)}


def _flip_boxes(boxes: Tensor, width: int) -> Tensor:
    """[M, 4] xyxy boxes mirrored in an image `width` pixels wide."""
    flipped = boxes.clone()
    flipped[:, [0, 2]] = width - boxes[:, [2, 0]]
    return flipped


def sample_generator(seed: int, epoch: int, index: int) -> torch.Generator:
    """A generator whose state depends only on (seed, epoch, index)."""
    state = np.random.SeedSequence([seed, epoch, index]).generate_state(2, dtype=np.uint32)
    return torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))


class KeyedAugmentation(Dataset):
    """`dataset[index]` augmented by `transform`, addressed by the key `(index, epoch)`.

    GroupedBatchSampler yields such keys. The draw for a key is the same in every process and every run.
    """

    def __init__(self, dataset: Dataset, transform: Transform, seed: int) -> None:
        self.dataset, self.transform, self.seed = dataset, transform, seed

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]) -> tuple[Tensor, dict]:
        index, epoch = key
        image, target = self.dataset[index]
        return self.transform(image, target, sample_generator(self.seed, epoch, index))
