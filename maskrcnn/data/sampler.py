"""Aspect-ratio grouped batches, sharded across distributed ranks."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
from torch.utils.data import Sampler


class EpochOrder(Sampler[int]):
    """The epoch's image order, permuted from (seed, epoch). It is the batch sampler's `.sampler` because
    Lightning calls `set_epoch` on `dataloader.sampler` and `dataloader.batch_sampler.sampler`, never on the
    batch sampler itself."""

    def __init__(self, n: int, shuffle: bool, seed: int) -> None:
        self.n, self.shuffle, self.seed, self.epoch = n, shuffle, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __iter__(self) -> Iterator[int]:
        order = np.arange(self.n)
        if self.shuffle:
            order = np.random.default_rng((self.seed, self.epoch)).permutation(order)
        return iter(order.tolist())

    def __len__(self) -> int:
        return self.n


class GroupedBatchSampler(Sampler[list[tuple[int, int]]]):
    """Batches whose images share an aspect-ratio group (landscape / portrait), so padding stays small.

    Every rank builds the same batch list from (seed, epoch) and takes batches rank::world_size, so ranks
    see disjoint batches and the same number of them (the list is truncated to a multiple of world_size).
    Use with Lightning's `use_distributed_sampler=False`.

    A batch is a list of keys `(image index, epoch)`, the keys `KeyedAugmentation` draws its augmentation
    from. `resume_at(n)` makes the next epoch's iteration start at this rank's batch n (a resumed run).
    """

    def __init__(
        self,
        group_ids: Sequence[int],
        batch_size: int,
        *,
        shuffle: bool = True,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        drop_last: bool = True,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside [0, world_size={world_size})")
        self.group_ids = np.asarray(group_ids, dtype=np.int64)
        self.batch_size, self.shuffle, self.seed = batch_size, shuffle, seed
        self.rank, self.world_size, self.drop_last = rank, world_size, drop_last
        self.sampler = EpochOrder(len(self.group_ids), shuffle, seed)
        self._resume_at = 0

    def resume_at(self, batches_done: int) -> None:
        """Skips the first `batches_done` batches of the next iteration only."""
        if not 0 <= batches_done <= len(self):
            raise ValueError(f"cannot resume at batch {batches_done} of an epoch of {len(self)} batches")
        self._resume_at = batches_done

    def set_epoch(self, epoch: int) -> None:
        self.sampler.set_epoch(epoch)

    def _all_batches(self) -> list[list[int]]:
        batches: list[list[int]] = []
        pending: dict[int, list[int]] = {}
        for index in self.sampler:
            group = pending.setdefault(int(self.group_ids[index]), [])
            group.append(index)
            if len(group) == self.batch_size:
                batches.append(group.copy())
                group.clear()
        if not self.drop_last:
            batches += [group for group in pending.values() if group]
        usable = len(batches) - len(batches) % self.world_size
        return batches[:usable]

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        start, self._resume_at = self._resume_at, 0
        epoch = self.sampler.epoch
        for batch in self._all_batches()[self.rank :: self.world_size][start:]:
            yield [(index, epoch) for index in batch]

    def __len__(self) -> int:
        return len(self._all_batches()) // self.world_size


def same_size_batches(sizes: Sequence[tuple[int, int]], batch_size: int) -> list[list[int]]:
    """Batches of positions into `sizes` ((h, w) per image) whose images are all one size, at most
    `batch_size` each, in order of their first image; within a size the order is kept."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    by_size: dict[tuple[int, int], list[int]] = {}
    for i, size in enumerate(sizes):
        by_size.setdefault(tuple(size), []).append(i)
    batches = [group[k : k + batch_size] for group in by_size.values() for k in range(0, len(group), batch_size)]
    return sorted(batches, key=lambda batch: batch[0])
