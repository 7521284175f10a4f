"""What bench.train_step compares: the detectors of its two setups, their batches, and --ckpt's weights.

r50_fpn: our R50-FPN against torchvision's maskrcnn_resnet50_fpn on one synthetic batch in host memory.
demo: the demo experiment's detector with roi=align (ours) or roi=align-torchvision, fed by the demo's data module
(train.py's: its train loader, workers, batch order and flip augmentation), one loader per implementation with the
same seed, so both see the same batches in the same order.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable, Iterator
from itertools import count
from pathlib import Path
from typing import Any

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch import Tensor, nn
from torch.utils.data import DataLoader
from torchvision.models.detection import maskrcnn_resnet50_fpn

from maskrcnn.builders import build_model
from maskrcnn.checkpoints import CheckpointError, read_checkpoint
from maskrcnn.config import compose_config
from maskrcnn.nested import flatten
from maskrcnn.trained_model import load_detector

Batch = tuple[list[Tensor], list[dict[str, Any]]]  # images Float[3, H, W], targets (boxes, labels, masks, ...)


def demo_config(overrides: list[str], roi: str | None = None) -> DictConfig:
    """The demo experiment's run config with `overrides` (and `roi=<roi>`)."""
    return compose_config("train", ["experiment=demo", *overrides, *([f"roi={roi}"] if roi else [])])


def build(impl: str, setup: str, size: tuple[int, int], overrides: list[str] = (), num_classes: int = 6) -> nn.Module:
    """r50_fpn: R50-FPN Mask R-CNN, 80 classes, inputs resized to min/max side `size`, ours or torchvision's.
    demo: the demo experiment's detector (with `overrides`) for `num_classes`, roi=align (ours) or
    roi=align-torchvision."""
    if setup == "demo":
        cfg = demo_config(list(overrides), "align" if impl == "ours" else "align-torchvision")
        return build_model(cfg.model, cfg.roi, num_classes, cfg.data.image_min_size, cfg.data.image_max_size)
    min_size, max_size = min(size), max(size)
    if impl == "torchvision":
        return maskrcnn_resnet50_fpn(
            weights=None, weights_backbone=None, num_classes=81, min_size=min_size, max_size=max_size
        )
    cfg = compose_config("train", ["model=r50_fpn", "roi=align", "data=coco"])
    return build_model(cfg.model, cfg.roi, 80, min_size, max_size)


def checkpoint_weights(path: Path, cfg: DictConfig) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """(the detector's state_dict from a train.py checkpoint, what the JSON records of it).

    maskrcnn.trained_model.load_detector reads it (any checkpoint format; its `model.` prefix dropped with the
    LightningModule). `differs_from_bench`: the model / image-size settings in which the checkpoint's run differs
    from the benchmarked config `cfg` (weights load only into the same structure, but a threshold could differ)."""
    module, run_config = load_detector(path)
    step = read_checkpoint(path, mmap=True).get("global_step")  # mmap: only the metadata is read again
    trained = {"model": module.hparams["model"], "image_min_size": module.hparams["image_min_size"],
               "image_max_size": module.hparams["image_max_size"]}  # fmt: skip
    bench = {"model": OmegaConf.to_container(cfg.model, resolve=True), "image_min_size": cfg.data.image_min_size,
             "image_max_size": cfg.data.image_max_size}  # fmt: skip
    flat_trained, flat_bench = flatten(trained), flatten(bench)
    differs = sorted(k for k in flat_trained.keys() | flat_bench.keys()
                     if k != "model.backbone.weights" and flat_trained.get(k) != flat_bench.get(k))  # fmt: skip
    info = {"path": str(path), "global_step": step, "roi": module.hparams["roi"].get("name"),
            "task_name": (run_config or {}).get("task_name"), "differs_from_bench": differs}  # fmt: skip
    return module.model.state_dict(), info



def synthetic_batch(batch: int, size: tuple[int, int], seed: int = 0) -> Batch:
    """Images Float[3, H, W] in [0, 1] and targets with ~7 instances each (Poisson), on the CPU."""
    g = torch.Generator().manual_seed(seed)
    h, w = size
    images, targets = [], []
    ys, xs = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    for _ in range(batch):
        n = max(1, int(torch.poisson(torch.tensor(7.0), generator=g)))
        wh = torch.rand(n, 2, generator=g) * torch.tensor([w / 2, h / 2]) + 16
        xy = torch.rand(n, 2, generator=g) * (torch.tensor([w, h]) - wh)
        boxes = torch.cat([xy, xy + wh], 1)
        cx, cy = (boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2
        rx, ry = wh[:, 0] / 2, wh[:, 1] / 2
        inside = ((xs - cx[:, None, None]) / rx[:, None, None]) ** 2 + (
            (ys - cy[:, None, None]) / ry[:, None, None]
        ) ** 2
        images.append(torch.rand(3, h, w, generator=g))
        targets.append(
            {
                "boxes": boxes,
                "labels": torch.randint(1, 81, (n,), generator=g),
                "masks": (inside <= 1).to(torch.uint8),
                "crowd_boxes": torch.zeros(0, 4),
            }
        )
    return images, targets


def data_overrides(overrides: list[str], stack: contextlib.ExitStack) -> list[str]:
    """`overrides`, plus a temporary data dir (removed with `stack`) unless $ROI_GAP_DATA_DIR or they name one."""
    if os.environ.get("ROI_GAP_DATA_DIR") or any(
        o.startswith(("paths.data_dir=", "data.module.shapes.root=")) for o in overrides
    ):
        return list(overrides)
    return [*overrides, f"paths.data_dir={stack.enter_context(tempfile.TemporaryDirectory(prefix='train_step_'))}"]


def endless(loader: DataLoader) -> Iterator[Batch]:
    """The loader's batches epoch after epoch, the epoch set before each pass as Lightning does."""
    for epoch in count():
        loader.batch_sampler.set_epoch(epoch)
        yield from loader


def demo_feeds(
    cfg: DictConfig, impls: list[str], stack: contextlib.ExitStack
) -> tuple[list[dict], dict[str, Callable[[], Batch]]]:
    """(the training classes, a next-batch function per implementation): the run's data module as train.py makes
    it (the data generated if missing), one train loader each; same seed, so the same batches in the same order.
    The loaders (and their workers) end with `stack`."""
    datamodule = instantiate(cfg.data.module)
    datamodule.prepare_data()
    datamodule.setup("fit")
    feeds = {}
    for impl in impls:
        batches = endless(datamodule.train_dataloader())
        stack.callback(batches.close)
        feeds[impl] = batches.__next__
    return datamodule.classes, feeds


def detectors_and_feeds(
    setup: str,
    impls: list[str],
    batch: int,
    size: tuple[int, int],
    overrides: list[str],
    ckpt: Path | None,
    device: torch.device,
    stack: contextlib.ExitStack,
) -> tuple[dict[str, tuple[nn.Module, Callable[[], Batch]]], dict[str, Any] | None]:
    """({impl: (its detector on the CPU, seed 0 or the checkpoint's weights; a next-batch function)}, what
    checkpoint_weights records of `ckpt`). The demo's loaders and temporary data end with `stack`."""
    weights, checkpoint, num_classes = None, None, 0
    if setup == "demo":
        overrides = data_overrides(overrides, stack)
        cfg = demo_config(overrides)
        classes, feeds = demo_feeds(cfg, impls, stack)
        num_classes = len(classes)
        if ckpt:
            weights, checkpoint = checkpoint_weights(ckpt, cfg)
    else:
        images, targets = synthetic_batch(batch, size)
        if device.type == "cuda":  # pinned, as the data module's batches are on CUDA
            images = [image.pin_memory() for image in images]
            targets = [{k: v.pin_memory() for k, v in target.items()} for target in targets]
        feeds = dict.fromkeys(impls, lambda: (images, targets))
    detectors = {}
    for impl in impls:
        torch.manual_seed(0)
        model = build(impl, setup, size, overrides, num_classes)
        if weights is not None:
            try:
                model.load_state_dict(weights)
            except RuntimeError as e:
                raise CheckpointError(f"{ckpt}: not a checkpoint of the benchmarked detector: {e}") from e
        detectors[impl] = (model, feeds[impl])
    return detectors, checkpoint
