"""Mask R-CNN R50-FPN training step: ours vs torchvision's maskrcnn_resnet50_fpn, the same work side by side.

    python -m bench.train_step --device cuda                        # 8 x 800x1333, bf16 autocast (the issue's setting)
    python -m bench.train_step --device cpu --batch 2 --size 256 256 --steps 3 --warmup 1   # a small CPU run

Both models: ResNet-50-FPN with trainable BatchNorm (random init), the same RPN / box / mask head sizes,
80 classes, SGD. The batch is synthetic (about 7 instances per image, boxes with elliptic masks), made once
in host memory; each step copies it to the device ("data"), runs forward + backward + optimizer step.

Reports, per implementation:
  - img/s over --steps timed steps after --warmup steps, and peak device memory (CUDA);
  - a breakdown from one extra profiled step with a device sync at every boundary: data, transform,
    backbone (+FPN), rpn (with its losses), roi_heads (with the box and mask losses), backward, optimizer,
    as shares of that step; and the share of the step's time spent in the RoI ops themselves (forward and
    backward, from torch.profiler: device time on CUDA, CPU time on CPU).
JSON goes to --out (default bench/results/train_step_<device>.json).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir
from torch import Tensor, nn
from torch.profiler import ProfilerActivity, profile
from torchvision.models.detection import maskrcnn_resnet50_fpn

from bench.report import write_json
from maskrcnn.builders import build_model
from maskrcnn.runinfo import device_description

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
PARTS = ("transform", "backbone", "rpn", "roi_heads")
ROI_OP_NAMES = ("roi_align", "roi_pool", "roi_warp", "multilevel_roi")  # ours (roi_ops::...), torchvision::roi_align


def build(impl: str, size: tuple[int, int]) -> nn.Module:
    """R50-FPN Mask R-CNN, 80 classes, inputs resized to min/max side `size`."""
    min_size, max_size = min(size), max(size)
    if impl == "torchvision":
        return maskrcnn_resnet50_fpn(
            weights=None, weights_backbone=None, num_classes=81, min_size=min_size, max_size=max_size
        )
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        cfg = compose("train", ["model=r50_fpn", "roi=align", "data=coco"])
    return build_model(cfg.model, cfg.roi, 80, min_size, max_size)


def synthetic_batch(batch: int, size: tuple[int, int], seed: int = 0) -> tuple[list[Tensor], list[dict]]:
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
                "iscrowd": torch.zeros(n, dtype=torch.int64),
            }
        )
    return images, targets


def to_device(images: list[Tensor], targets: list[dict], device: torch.device) -> tuple[list[Tensor], list[dict]]:
    images = [i.to(device, non_blocking=True) for i in images]
    targets = [{k: v.to(device, non_blocking=True) for k, v in t.items()} for t in targets]
    return images, targets


class Stopwatch:
    """Synchronized wall time per named section; `hooks` time a module's forward as one section."""

    def __init__(self, device: torch.device) -> None:
        self.device, self.seconds = device, {}

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    @contextlib.contextmanager
    def section(self, name: str) -> Iterator[None]:
        self._sync()
        start = time.perf_counter()
        yield
        self._sync()
        self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start

    def hooks(self, module: nn.Module, name: str) -> list:
        active: list[contextlib.AbstractContextManager] = []

        def enter(*_: object) -> None:
            active.append(self.section(name))
            active[-1].__enter__()

        def leave(*_: object) -> None:
            active.pop().__exit__(None, None, None)

        return [module.register_forward_pre_hook(enter), module.register_forward_hook(leave)]


def train_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    batch: tuple,
    device: torch.device,
    autocast: torch.autocast,
    watch: Stopwatch | None = None,
) -> None:
    section: Callable[[str], contextlib.AbstractContextManager] = (
        watch.section if watch else (lambda name: contextlib.nullcontext())
    )
    with section("data"):
        images, targets = to_device(*batch, device)
    with autocast:
        losses = model(images, targets)
        loss = sum(losses.values())
    with section("backward"):
        loss.backward()
    with section("optimizer"):
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)


def measure(impl: str, args: argparse.Namespace, device: torch.device) -> dict:
    torch.manual_seed(0)
    model = build(impl, tuple(args.size)).to(device).train()
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9, weight_decay=1e-4)
    batch = synthetic_batch(args.batch, tuple(args.size))
    if device.type == "cuda":
        batch = ([i.pin_memory() for i in batch[0]], [{k: v.pin_memory() for k, v in t.items()} for t in batch[1]])
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": None}[args.precision]
    autocast = torch.autocast(device.type, dtype=dtype, enabled=dtype is not None)

    for _ in range(args.warmup):
        train_step(model, optimizer, batch, device, autocast)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    for _ in range(args.steps):
        train_step(model, optimizer, batch, device, autocast)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = (time.perf_counter() - start) / args.steps

    watch = Stopwatch(device)
    handles = [h for part in PARTS for h in watch.hooks(getattr(model, part), part)]
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof, watch.section("step"):
        train_step(model, optimizer, batch, device, autocast, watch)
    for handle in handles:
        handle.remove()
    step = watch.seconds.pop("step")
    time_attr = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
    events = prof.key_averages()
    total_us = sum(getattr(e, time_attr) for e in events)
    roi_us = sum(getattr(e, time_attr) for e in events if any(n in e.key for n in ROI_OP_NAMES))
    return {
        "impl": impl,
        "seconds_per_step": round(seconds, 4),
        "images_per_second": round(args.batch / seconds, 2),
        "peak_memory_gib": round(torch.cuda.max_memory_allocated(device) / 2**30, 2) if device.type == "cuda" else None,
        "breakdown": {name: round(s / step, 3) for name, s in watch.seconds.items()},
        "profiled_step_seconds": round(step, 4),
        "roi_ops_share": round(roi_us / total_us, 4) if total_us else 0.0,
        "roi_op_kernels": sorted({e.key for e in events if any(n in e.key for n in ROI_OP_NAMES)}),
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--impl", nargs="+", default=["ours", "torchvision"], choices=["ours", "torchvision"])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--size", type=int, nargs=2, default=[800, 1333], metavar=("H", "W"))
    parser.add_argument("--precision", default="bf16", choices=["bf16", "fp16", "fp32"])
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    out = args.out or Path(f"bench/results/train_step_{device.type}.json")

    load_at_start = list(os.getloadavg())
    results = []
    for impl in args.impl:
        result = measure(impl, args, device)
        results.append(result)
        print(json.dumps(result))
    if len(results) == 2:
        ours, tv = results
        print(f"ours / torchvision: {ours['images_per_second'] / tv['images_per_second']:.2f}x img/s")
    report = {
        "machine": device_description(),
        "torch": torch.__version__,
        "load_average_at_start": load_at_start,
        "load_average_at_end": list(os.getloadavg()),
        "settings": {k: v for k, v in vars(args).items() if k != "out"},
        "results": results,
    }
    write_json(out, report)
    return report


if __name__ == "__main__":
    main()
