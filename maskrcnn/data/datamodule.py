"""LightningDataModule for COCO-format instance segmentation (COCO 2017 or the built-in shapes set)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Subset

from maskrcnn.data.coco import CocoInstances, DatasetNotFoundError, dataset_not_found_message
from maskrcnn.data.sampler import GroupedBatchSampler, same_size_batches
from maskrcnn.data.shapes import ensure_shapes_dataset
from maskrcnn.data.transforms import KeyedAugmentation, RandomHorizontalFlip


def collate(batch: list[tuple[Tensor, dict]]) -> tuple[list[Tensor], list[dict]]:
    """Images differ in size, so a batch stays a pair of lists (the model pads them)."""
    images, targets = zip(*batch, strict=True)
    return list(images), list(targets)


class InstanceDataModule(pl.LightningDataModule):
    """Train/val COCO-format splits. With `shapes` set, `prepare_data` first generates the built-in data.

    Args:
        train_images, train_annotations, val_images, val_annotations: image dirs and instances JSONs.
        batch_size: images per GPU/process per step. val_batch_size: the same for validation.
        num_workers: dataloader worker processes (0 = load in the main process).
        on_bad_image: "error" (stop with the file and image id) or "skip" (warn, count, go on).
        shapes: generation parameters of the shapes dataset (`ensure_shapes_dataset`'s keywords plus `root`).
        flip_prob: horizontal-flip probability in training. seed: batch order and augmentation seed.
        filter_empty: train only on images with at least one non-crowd annotation (as the references do).
        classes: the model's classes ([{"id", "name"}] for labels 1..K). None: the training annotations'
            categories (after setup("fit"), in `classes`); validation labels use the same classes.

    Validation batches hold images of one size only: the detector pads a batch to its largest image, and the
    padding would change the features, so the metrics would depend on the batch size (torchvision's reference
    evaluates one image per GPU for this reason). COCO's frequent sizes (640x480, ...) still batch.
    """

    def __init__(
        self,
        train_images: str,
        train_annotations: str,
        val_images: str,
        val_annotations: str,
        batch_size: int = 2,
        num_workers: int = 2,
        val_batch_size: int = 4,
        on_bad_image: str = "error",
        shapes: dict[str, Any] | None = None,
        flip_prob: float = 0.5,
        seed: int = 0,
        filter_empty: bool = False,
        classes: list[dict] | None = None,
    ) -> None:
        super().__init__()
        self.paths = {
            "train images": Path(train_images),
            "train annotations": Path(train_annotations),
            "val images": Path(val_images),
            "val annotations": Path(val_annotations),
        }
        self.batch_size, self.val_batch_size, self.num_workers = batch_size, val_batch_size, num_workers
        self.on_bad_image, self.shapes, self.flip_prob, self.seed = on_bad_image, shapes, flip_prob, seed
        self.filter_empty, self.classes = filter_empty, classes
        self.train_dataset: CocoInstances | None = None
        self.val_dataset: CocoInstances | None = None

    def prepare_data(self) -> None:
        if self.shapes is not None:
            params = dict(self.shapes)
            ensure_shapes_dataset(params.pop("root"), **params)

    def check_paths(self, stage: str | None = None) -> None:
        """Raises DatasetNotFoundError for a missing file or directory that `stage` needs (None, fit: all)."""
        for what, path in self.paths.items():
            if (stage in (None, "fit") or what.startswith("val")) and not path.exists():
                raise DatasetNotFoundError(dataset_not_found_message(what, path))

    def setup(self, stage: str | None = None) -> None:
        self.check_paths(stage)
        if stage in (None, "fit") and self.train_dataset is None:
            self.train_dataset = CocoInstances(
                self.paths["train images"],
                self.paths["train annotations"],
                self.on_bad_image,
                self.filter_empty,
                self.classes,
            )
            self.classes = self.train_dataset.classes
        if self.val_dataset is None:
            self.val_dataset = CocoInstances(
                self.paths["val images"], self.paths["val annotations"], self.on_bad_image, classes=self.classes
            )

    def _rank_and_world(self) -> tuple[int, int]:
        if self.trainer is None:
            return 0, 1
        return self.trainer.global_rank, self.trainer.world_size

    def _loader_options(self) -> dict[str, Any]:
        workers = self.num_workers
        return {
            "num_workers": workers,
            "collate_fn": collate,
            "pin_memory": torch.cuda.is_available(),
            "persistent_workers": workers > 0,
            # The loader's own generator: creating its iterator must not advance the global RNG, which a
            # checkpoint restores (a resumed run creates its iterators at other points than a straight one).
            "generator": torch.Generator().manual_seed(self.seed),
        }

    def _resume_position(self, batches_per_epoch: int) -> tuple[int, int]:
        """(epoch, batches already trained in it) to start from: (0, 0) for a fresh run.

        Both are needed before the loader exists: with workers, the first `iter()` (which Lightning makes
        before it calls `set_epoch`) already draws the epoch's order. `processed`, not `completed`: a
        checkpoint saved in on_train_batch_end has not counted its own batch as completed yet."""
        if self.trainer is None or not self.trainer.fit_loop.restarting:
            return 0, 0
        fit_loop = self.trainer.fit_loop
        done = fit_loop.epoch_loop.batch_progress.current.processed
        return fit_loop.epoch_progress.current.processed + done // batches_per_epoch, done % batches_per_epoch

    def train_dataloader(self) -> DataLoader:
        rank, world = self._rank_and_world()
        sampler = GroupedBatchSampler(
            self.train_dataset.group_ids(),
            self.batch_size,
            shuffle=True,
            seed=self.seed,
            rank=rank,
            world_size=world,
        )
        if len(sampler) == 0:
            raise ValueError(
                f"{self.paths['train annotations']}: {len(self.train_dataset)} images give no full batch of "
                f"{self.batch_size} per rank on {world} rank(s)"
            )
        epoch, batches_done = self._resume_position(len(sampler))
        sampler.set_epoch(epoch)
        sampler.resume_at(batches_done)
        dataset = KeyedAugmentation(self.train_dataset, RandomHorizontalFlip(self.flip_prob), self.seed)
        return DataLoader(dataset, batch_sampler=sampler, **self._loader_options())

    def val_dataloader(self) -> DataLoader:
        rank, world = self._rank_and_world()
        indices = range(rank, len(self.val_dataset), world)
        sizes = zip(self.val_dataset.heights[indices].tolist(), self.val_dataset.widths[indices].tolist(), strict=True)
        batches = same_size_batches(list(sizes), self.val_batch_size)
        shard = Subset(self.val_dataset, indices)
        return DataLoader(shard, batch_sampler=batches, **self._loader_options())
