"""Mask R-CNN training step: our RoI ops against torchvision's, the same work side by side, with a profile.

Two setups (``--setup``):

* ``r50_fpn``: our R50-FPN detector against torchvision's ``maskrcnn_resnet50_fpn`` (same RPN / box / mask head
  sizes, 80 classes), on a synthetic batch (about 7 instances per image, boxes with elliptic masks);
* ``demo``: the detector of ``configs/experiment/demo.yaml`` (r18_fpn on the 256 px shapes data, batch 4, fp32)
  twice, with ``roi=align`` (ours) and ``roi=align-torchvision`` (torchvision's RoIAlign in our detector, grouped by
  level as its MultiScaleRoIAlign does), on a real shapes batch generated into a temporary directory.

    python -m bench.train_step --device cuda                        # 8 x 800x1333, bf16 autocast (the issue's setting)
    python -m bench.train_step --device cpu --batch 2 --size 256 256 --steps 3 --warmup 1   # a small CPU run
    python -m bench.train_step --device cpu --setup demo --steps 10 --profile-steps 3     # the CPU demo step

Both models start from the same seed; the batch is made once in host memory, and each step copies it to the
device ("data"), runs forward + backward + optimizer step. The steps of the two implementations alternate (warm-up,
timed and profiled steps alike), so a slow spell of a shared machine hits both.

Reports, per implementation:
  - seconds per step (median over the timed steps, and their spread), process CPU seconds per step (median: on a
    shared machine what the step used rather than what it waited for) and img/s; peak device memory (CUDA);
  - from the profiled steps (a device sync at every boundary): a breakdown into data, transform, backbone (+FPN),
    rpn (with its losses), roi_heads (with the box and mask losses), backward, optimizer, as shares of the step;
  - torch.profiler self times per operator, forward and backward apart (backward: run by the autograd engine),
    the RoI ops' share of the step (device time on CUDA, CPU time on CPU), their inclusive time (with what they
    call: torchvision's backward zero-fills its gradient with at::zeros), and the inclusive time of the RoI
    extractors and of the mask-target crop.
JSON goes to --out (default bench/results/train_step_<device>[_<setup>].json).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
from torch import Tensor, nn
from torch.profiler import ProfilerActivity, profile, record_function
from torchvision.models.detection import maskrcnn_resnet50_fpn

import roi_heads.heads
from bench.report import write_json
from maskrcnn.builders import build_model
from maskrcnn.config import compose_config
from maskrcnn.data.coco import CocoInstances
from maskrcnn.data.shapes import SHAPE_CLASSES, ensure_shapes_dataset
from maskrcnn.runinfo import device_description

PARTS = ("transform", "backbone", "rpn", "roi_heads")


def is_roi_op(name: str) -> bool:
    """A profiler event of our RoI ops or torchvision's: the dispatcher entries (roi_ops::multilevel_roi_forward,
    torchvision::roi_align, torchvision::_roi_align_backward, ...), the autograd kernels under them
    (GeneratedBackwardFor_roi_ops_..._default: the forward kernel's time is their self time) and the backward
    nodes (GeneratedBackwardFor_..._defaultBackward and the engine's evaluate_function around them)."""
    return "roi_ops" in name or ("torchvision" in name and "roi_" in name)


# Inclusive-time ranges of the RoI heads' pooling (forward): our detector's extractors and its mask-target crop.
RANGES = ("box_extractor", "mask_extractor", "mask_targets")
TOP_OPS = 15  # operators listed per phase


def build(impl: str, setup: str, size: tuple[int, int]) -> nn.Module:
    """r50_fpn: R50-FPN Mask R-CNN, 80 classes, inputs resized to min/max side `size`, ours or torchvision's.
    demo: the demo experiment's detector with roi=align (ours) or roi=align-torchvision."""
    if setup == "demo":
        roi = "align" if impl == "ours" else "align-torchvision"
        cfg = compose_config("train", ["experiment=demo", f"roi={roi}"])
        return build_model(cfg.model, cfg.roi, len(SHAPE_CLASSES), cfg.data.image_min_size, cfg.data.image_max_size)
    min_size, max_size = min(size), max(size)
    if impl == "torchvision":
        return maskrcnn_resnet50_fpn(
            weights=None, weights_backbone=None, num_classes=81, min_size=min_size, max_size=max_size
        )
    cfg = compose_config("train", ["model=r50_fpn", "roi=align", "data=coco"])
    return build_model(cfg.model, cfg.roi, 80, min_size, max_size)


def shapes_batch(batch: int) -> tuple[list[Tensor], list[dict]]:
    """The first `batch` training images of a shapes dataset with the demo's parameters (generated in a temporary
    directory), as the data module gives them (without the flip)."""
    shapes = dict(compose_config("train", ["experiment=demo"]).data.module.shapes)
    shapes.pop("root")
    shapes.update(num_train=batch, num_val=1)
    with tempfile.TemporaryDirectory() as tmp:
        root = ensure_shapes_dataset(Path(tmp) / "shapes", **shapes)
        data = CocoInstances(root / "train", root / "annotations" / "instances_train.json")
        items = [data[i] for i in range(batch)]
    images = [image for image, _ in items]
    targets = [{k: v for k, v in target.items() if isinstance(v, Tensor)} for _, target in items]
    return images, targets


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


@contextlib.contextmanager
def profiled_ranges(model: nn.Module) -> Iterator[None]:
    """record_function ranges (RANGES) around the RoI extractors' forward and the mask-target crop, ours or
    torchvision's (MultiScaleRoIAlign modules, project_masks_on_boxes)."""
    import torchvision.models.detection.roi_heads as tv_heads

    handles, open_ranges = [], []
    for name, attrs in (("box_extractor", ("box_extractor", "box_roi_pool")),
                        ("mask_extractor", ("mask_extractor", "mask_roi_pool"))):
        module = next((getattr(model.roi_heads, a) for a in attrs if hasattr(model.roi_heads, a)), None)
        if module is None:
            continue

        def enter(*_: object, name: str = name) -> None:
            open_ranges.append(record_function(name))
            open_ranges[-1].__enter__()

        def leave(*_: object) -> None:
            open_ranges.pop().__exit__(None, None, None)

        handles += [module.register_forward_pre_hook(enter), module.register_forward_hook(leave)]
    patched = [(roi_heads.heads, "mask_targets"), (tv_heads, "project_masks_on_boxes")]
    originals = [getattr(m, a) for m, a in patched]

    def ranged(fn: Callable) -> Callable:
        def call(*args, **kwargs):
            with record_function("mask_targets"):
                return fn(*args, **kwargs)

        return call

    for (m, a), fn in zip(patched, originals, strict=True):
        setattr(m, a, ranged(fn))
    try:
        yield
    finally:
        for (m, a), fn in zip(patched, originals, strict=True):
            setattr(m, a, fn)
        for handle in handles:
            handle.remove()


def ancestors(event) -> Iterator:
    """The profiler events enclosing `event`, innermost first."""
    event = event.cpu_parent
    while event is not None:
        yield event
        event = event.cpu_parent


def roi_ancestor(event) -> bool:
    """Is this event inside a RoI-op event (the dispatcher nests an op's autograd and backend kernels in it)?"""
    return any(is_roi_op(a.name) for a in ancestors(event))


def in_backward(event) -> bool:
    """Did the autograd engine run this profiler event (the backward pass)?"""
    return any(e.name.startswith("autograd::engine::evaluate_function") for e in (event, *ancestors(event)))


def profiled_step(model, optimizer, batch, device, autocast) -> dict:
    """One step under torch.profiler and the Stopwatch: step seconds, breakdown, self ms per (phase, operator),
    inclusive ms of the RANGES."""
    watch = Stopwatch(device)
    handles = [h for part in PARTS for h in watch.hooks(getattr(model, part), part)]
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    with profiled_ranges(model), profile(activities=activities) as prof, watch.section("step"):
        train_step(model, optimizer, batch, device, autocast, watch)
    for handle in handles:
        handle.remove()
    step = watch.seconds.pop("step")
    time_attr = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
    self_ms = {"forward": Counter(), "backward": Counter()}
    ranges, roi_inclusive = Counter(), Counter()
    for e in prof.events():
        phase = "backward" if in_backward(e) else "forward"
        self_ms[phase][e.name] += getattr(e, time_attr) / 1e3
        inclusive = (e.device_time_total if device.type == "cuda" else e.cpu_time_total) / 1e3
        if e.name in RANGES:
            ranges[e.name] += inclusive
        if is_roi_op(e.name) and not roi_ancestor(e):  # with what they call (torchvision's backward: at::zeros)
            roi_inclusive[phase] += inclusive
    return {
        "step": step,
        "breakdown": {name: s / step for name, s in watch.seconds.items()},
        "self_ms": self_ms,
        "ranges_ms": ranges,
        "roi_inclusive_ms": roi_inclusive,
        "peak_memory_gib": torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None,
    }


def summarize(impl: str, batch: int, times: list[float], cpu_times: list[float], profiles: list[dict]) -> dict:
    """Medians of the timed steps; means over the profiled steps."""
    n = len(profiles)
    self_ms = {phase: Counter() for phase in ("forward", "backward")}
    for p in profiles:
        for phase in self_ms:
            self_ms[phase].update(p["self_ms"][phase])
    self_ms = {phase: {k: v / n for k, v in c.items()} for phase, c in self_ms.items()}
    total = sum(sum(c.values()) for c in self_ms.values())
    roi = {phase: sum(v for k, v in c.items() if is_roi_op(k)) for phase, c in self_ms.items()}
    seconds = statistics.median(times)
    peaks = [p["peak_memory_gib"] for p in profiles if p["peak_memory_gib"] is not None]
    return {
        "impl": impl,
        "seconds_per_step": round(seconds, 4),
        "step_seconds": {"median": round(seconds, 4), "min": round(min(times), 4), "max": round(max(times), 4)},
        "cpu_seconds_per_step": round(statistics.median(cpu_times), 4),
        "images_per_second": round(batch / seconds, 2),
        "peak_memory_gib": round(max(peaks), 2) if peaks else None,
        "breakdown": {k: round(sum(p["breakdown"][k] for p in profiles) / n, 3) for k in profiles[0]["breakdown"]},
        "profiled_step_seconds": round(sum(p["step"] for p in profiles) / n, 4),
        "profiled_steps": n,
        "self_ms_total": round(total, 1),
        "roi_ops_ms": {phase: round(v, 2) for phase, v in roi.items()},
        "roi_ops_share": round(sum(roi.values()) / total, 4) if total else 0.0,
        "roi_ops_inclusive_ms": {
            phase: round(sum(p["roi_inclusive_ms"][phase] for p in profiles) / n, 2) for phase in self_ms
        },
        "ranges_ms": {k: round(sum(p["ranges_ms"].get(k, 0.0) for p in profiles) / n, 2) for k in RANGES},
        "top_ops_ms": {
            phase: {k: round(v, 2) for k, v in sorted(c.items(), key=lambda kv: -kv[1])[:TOP_OPS]}
            for phase, c in self_ms.items()
        },
        "roi_op_kernels": sorted({k for c in self_ms.values() for k in c if is_roi_op(k)}),
    }


def measure(args: argparse.Namespace, device: torch.device) -> list[dict]:
    """Every implementation on the same batch, steps alternating between them."""
    size = tuple(args.size)
    batch = shapes_batch(args.batch) if args.setup == "demo" else synthetic_batch(args.batch, size)
    if device.type == "cuda":
        batch = ([i.pin_memory() for i in batch[0]], [{k: v.pin_memory() for k, v in t.items()} for t in batch[1]])
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": None}[args.precision]
    autocast = torch.autocast(device.type, dtype=dtype, enabled=dtype is not None)
    runs = {}
    for impl in args.impl:
        torch.manual_seed(0)
        model = build(impl, args.setup, size).to(device).train()
        if args.channels_last:
            model = model.to(memory_format=torch.channels_last)
        runs[impl] = (model, torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9, weight_decay=1e-4))

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    for _ in range(args.warmup):
        for model, optimizer in runs.values():
            train_step(model, optimizer, batch, device, autocast)
    times = {impl: [] for impl in runs}
    cpu_times = {impl: [] for impl in runs}  # process CPU seconds: what the step used, not what it waited for
    for _ in range(args.steps):
        for impl, (model, optimizer) in runs.items():
            sync()
            start, cpu_start = time.perf_counter(), time.process_time()
            train_step(model, optimizer, batch, device, autocast)
            sync()
            times[impl].append(time.perf_counter() - start)
            cpu_times[impl].append(time.process_time() - cpu_start)
    profiles = {impl: [] for impl in runs}
    for _ in range(args.profile_steps):
        for impl, (model, optimizer) in runs.items():
            profiles[impl].append(profiled_step(model, optimizer, batch, device, autocast))
    return [summarize(impl, args.batch, times[impl], cpu_times[impl], profiles[impl]) for impl in runs]


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--setup", default="r50_fpn", choices=["r50_fpn", "demo"])
    parser.add_argument("--impl", nargs="+", default=["ours", "torchvision"], choices=["ours", "torchvision"])
    parser.add_argument("--batch", type=int, default=None, help="images per step (default 8; demo: its batch 4)")
    parser.add_argument("--size", type=int, nargs=2, default=[800, 1333], metavar=("H", "W"), help="r50_fpn only")
    parser.add_argument("--precision", default=None, choices=["bf16", "fp16", "fp32"],
                        help="autocast dtype (default bf16; demo: fp32, as it trains)")
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--profile-steps", type=int, default=1)
    parser.add_argument("--note", default="", help="free text stored in the JSON, e.g. what else ran on the machine")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    demo = args.setup == "demo"
    if demo:
        cfg = compose_config("train", ["experiment=demo"])
        args.batch = args.batch or cfg.data.module.batch_size
        args.size = [cfg.data.image_min_size, cfg.data.image_max_size]  # recorded as run, not --size's default
        args.precision = args.precision or {"32-true": "fp32", "bf16-mixed": "bf16", "16-mixed": "fp16"}[
            cfg.trainer.precision]
    args.batch = args.batch or 8
    args.precision = args.precision or "bf16"
    device = torch.device(args.device)
    out = args.out or Path(f"bench/results/train_step_{device.type}{'_demo' if demo else ''}.json")

    load_at_start = list(os.getloadavg())
    results = measure(args, device)
    for result in results:
        print(json.dumps({k: v for k, v in result.items() if k != "top_ops_ms"}))
    if len(results) == 2:
        ours, tv = results
        print(f"ours / torchvision: {ours['images_per_second'] / tv['images_per_second']:.2f}x img/s; RoI ops "
              f"{ours['roi_ops_share']:.1%} vs {tv['roi_ops_share']:.1%} of the profiled self time")
    report = {
        "machine": device_description(),
        "torch": torch.__version__,
        "note": args.note,
        "load_average_at_start": load_at_start,
        "load_average_at_end": list(os.getloadavg()),
        "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items() if k != "out"},
        "results": results,
    }
    write_json(out, report)
    return report


if __name__ == "__main__":
    main()
