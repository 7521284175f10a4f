"""Mask R-CNN training step: our RoI ops against torchvision's, the same work side by side, with a profile.

Two setups (``--setup``):

* ``r50_fpn``: our R50-FPN detector against torchvision's ``maskrcnn_resnet50_fpn`` (same RPN / box / mask head
  sizes, 80 classes), on one synthetic batch made once in host memory (about 7 instances per image, boxes with
  elliptic masks);
* ``demo``: the detector of ``configs/experiment/demo.yaml`` (r18_fpn on the 256 px shapes data, batch 4, fp32)
  twice, with ``roi=align`` (ours) and ``roi=align-torchvision`` (torchvision's RoIAlign in our detector, grouped by
  level as its MultiScaleRoIAlign does), fed by the demo's own data module: its train dataloader (workers, batch
  order, flip augmentation) over the shapes data in $ROI_GAP_DATA_DIR, else generated into a temporary directory.
  Each implementation has its own loader, with the same seed, so both see the same batches in the same order
  (`image_ids` in the JSON). `--override` takes Hydra overrides for the demo config (tests shrink the data).
  `--ckpt` starts both from a checkpoint of a trained run (train.py's, of the demo's detector): an untrained
  detector's mask branch gets few positive RoIs (`mask_rois_per_image`), so a step-0 benchmark understates the
  trained step; the JSON records the checkpoint's global_step.

    python -m bench.train_step --device cuda                        # 8 x 800x1333, bf16 autocast (the issue's setting)
    python -m bench.train_step --device cpu --batch 2 --size 256 256 --steps 3 --warmup 1   # a small CPU run
    python -m bench.train_step --device cpu --setup demo --steps 10 --profile-steps 3     # the CPU demo step
    python -m bench.train_step --device cpu --setup demo --ckpt RUN/checkpoints/last.ckpt --steps 6 --warmup 1 \\
        --profile-steps 2                                           # the demo step of a trained detector

A step: the next batch to the device ("data": the wait for the loader plus the copy), forward, backward, optimizer
step (SGD, lr 0.02, momentum 0.9). The steps of the two implementations alternate (warm-up, FLOP-count, timed and
profiled steps alike), so a slow spell of a shared machine hits both.

Reports, per implementation:
  - seconds per step (median over the timed steps, and their spread), process CPU seconds per step (median: on a
    shared machine what the step used rather than what it waited for; the loader's workers not included) and
    img/s; peak device memory (CUDA);
  - FLOPs per step (one untimed step under FlopCounterMode: convolutions and matrix products, forward and
    backward; bench/flops.py says what it leaves out), the FLOP/s that makes over the median step, and that as a
    fraction of the FLOP/s of an fp32 torch.mm of two --gemm-size (2048) square matrices, measured in the same
    process on the same threads, before the warm-up and after the profiled steps (median of the samples). On
    CUDA the step may run in bf16 (--precision) or TF32 convolutions while the reference stays fp32. --no-flops
    skips the FLOP count and the GEMM;
  - from the profiled steps (--profile-steps; 0: none of these fields), with a device sync at every boundary:
    `breakdown`, the step's shares by data, forward and backward per component (transform, backbone with FPN,
    rpn, box branch, mask branch), optimizer and what they leave (bench/step_breakdown.py says how the backward
    is attributed); `breakdown_seconds`, the same in seconds; `components`, forward + backward per component;
    the mask branch's RoIs per image;
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
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
from torch import Tensor, nn
from torch.profiler import ProfilerActivity, profile

from bench import step_breakdown
from bench.flops import FlopCount, flops_report, gemm_flops_per_s
from bench.report import write_json
from bench.step_breakdown import PREFIX, in_backward, instrumented
from bench.step_setup import Batch, demo_config, detectors_and_feeds
from maskrcnn.runinfo import device_description


def is_roi_op(name: str) -> bool:
    """A profiler event of our RoI ops or torchvision's: the dispatcher entries (roi_ops::multilevel_roi_forward,
    torchvision::roi_align, torchvision::_roi_align_backward, ...), the autograd kernels under them
    (GeneratedBackwardFor_roi_ops_..._default: the forward kernel's time is their self time) and the backward
    nodes (GeneratedBackwardFor_..._defaultBackward and the engine's evaluate_function around them)."""
    return "roi_ops" in name or ("torchvision" in name and "roi_" in name)


# Inclusive-time ranges of the RoI heads' pooling (forward): the extractors and the mask-target crop.
RANGES = ("box_extractor", "mask_extractor", "mask_targets")
TOP_OPS = 15  # operators listed per phase


def to_device(images: list[Tensor], targets: list[dict], device: torch.device) -> Batch:
    """The batch on `device`; the targets' non-tensor entries (image_id) stay behind."""
    images = [i.to(device, non_blocking=True) for i in images]
    targets = [{k: v.to(device, non_blocking=True) for k, v in t.items() if isinstance(v, Tensor)} for t in targets]
    return images, targets


class Stopwatch:
    """Synchronized wall time per named section."""

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


def no_section(name: str) -> contextlib.AbstractContextManager:
    return contextlib.nullcontext()


def train_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    next_batch: Callable[[], Batch],
    device: torch.device,
    autocast: torch.autocast,
    section: Callable[[str], contextlib.AbstractContextManager] = no_section,
) -> list:
    """One step in the sections data, forward, backward, optimizer; -> the batch's image ids (None: synthetic)."""
    with section("data"):
        images, targets = next_batch()
        image_ids = [t.get("image_id") for t in targets]
        images, targets = to_device(images, targets, device)
    with section("forward"), autocast:
        losses = model(images, targets)
        loss = sum(losses.values())
    with section("backward"):
        loss.backward()
    with section("optimizer"):
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return image_ids


def profiled_step(model, optimizer, next_batch, device, autocast) -> dict:
    """One step under torch.profiler, the Stopwatch and the component ranges: step seconds, breakdown seconds,
    mask RoIs, self ms per (phase, operator), inclusive ms of the RANGES and of the RoI ops."""
    watch = Stopwatch(device)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    with instrumented(model, watch.section) as stats, profile(activities=activities) as prof, watch.section("step"):
        image_ids = train_step(model, optimizer, next_batch, device, autocast, watch.section)
    events = prof.events()
    cuda = device.type == "cuda"
    seconds = step_breakdown.breakdown_seconds(watch.seconds, step_breakdown.backward_seconds(events, cuda))
    time_attr = "self_device_time_total" if cuda else "self_cpu_time_total"
    self_ms = {"forward": Counter(), "backward": Counter()}
    ranges, roi_inclusive = Counter(), Counter()
    for e in events:
        phase = "backward" if in_backward(e) else "forward"
        self_ms[phase][e.name] += getattr(e, time_attr) / 1e3
        inclusive = (e.device_time_total if cuda else e.cpu_time_total) / 1e3
        if e.name.removeprefix(PREFIX) in RANGES:
            ranges[e.name.removeprefix(PREFIX)] += inclusive
        if is_roi_op(e.name) and not any(is_roi_op(a.name) for a in step_breakdown.ancestors(e)):
            roi_inclusive[phase] += inclusive  # with what they call (torchvision's backward: at::zeros)
    return {
        "step": watch.seconds["step"],
        "seconds": seconds,
        "mask_rois": stats["mask_rois"],
        "image_ids": image_ids,
        "self_ms": self_ms,
        "ranges_ms": ranges,
        "roi_inclusive_ms": roi_inclusive,
        "peak_memory_gib": torch.cuda.max_memory_allocated(device) / 2**30 if cuda else None,
    }


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)


def summarize_profiles(profiles: list[dict], batch: int) -> dict:
    """Means over the profiled steps; the breakdown's shares are of the mean profiled step."""
    step = _mean([p["step"] for p in profiles])
    seconds = {k: _mean([p["seconds"][k] for p in profiles]) for k in profiles[0]["seconds"]}
    shares = {k: s / step for k, s in seconds.items()}
    self_ms = {phase: Counter() for phase in ("forward", "backward")}
    for p in profiles:
        for phase in self_ms:
            self_ms[phase].update(p["self_ms"][phase])
    self_ms = {phase: {k: v / len(profiles) for k, v in c.items()} for phase, c in self_ms.items()}
    total = sum(sum(c.values()) for c in self_ms.values())
    roi = {phase: sum(v for k, v in c.items() if is_roi_op(k)) for phase, c in self_ms.items()}
    peaks = [p["peak_memory_gib"] for p in profiles if p["peak_memory_gib"] is not None]
    return {
        "peak_memory_gib": round(max(peaks), 2) if peaks else None,
        "profiled_step_seconds": round(step, 4),
        "breakdown": {k: round(v, 4) for k, v in shares.items()},
        "breakdown_seconds": {k: round(v, 4) for k, v in seconds.items()},
        "components": {k: round(v, 4) for k, v in step_breakdown.by_component(shares).items()},
        "mask_rois_per_image": round(_mean([p["mask_rois"] for p in profiles]) / batch, 1),
        "self_ms_total": round(total, 1),
        "roi_ops_ms": {phase: round(v, 2) for phase, v in roi.items()},
        "roi_ops_share": round(sum(roi.values()) / total, 4) if total else 0.0,
        "roi_ops_inclusive_ms": {
            phase: round(_mean([p["roi_inclusive_ms"][phase] for p in profiles]), 2) for phase in self_ms
        },
        "ranges_ms": {k: round(_mean([p["ranges_ms"].get(k, 0.0) for p in profiles]), 2) for k in RANGES},
        "top_ops_ms": {
            phase: {k: round(v, 2) for k, v in sorted(c.items(), key=lambda kv: -kv[1])[:TOP_OPS]}
            for phase, c in self_ms.items()
        },
        "roi_op_kernels": sorted({k for c in self_ms.values() for k in c if is_roi_op(k)}),
    }


def summarize(impl: str, batch: int, run: dict, gemm_rates: list[float]) -> dict:
    """Medians of the timed steps, the FLOP rates (absent with --no-flops) and the profiled steps' means (absent
    without profiled steps)."""
    times, cpu_times, profiles = run["times"], run["cpu_times"], run["profiles"]
    seconds = statistics.median(times)
    return {
        "impl": impl,
        "seconds_per_step": round(seconds, 4),
        "step_seconds": {"median": round(seconds, 4), "min": round(min(times), 4), "max": round(max(times), 4)},
        "cpu_seconds_per_step": round(statistics.median(cpu_times), 4),
        "images_per_second": round(batch / seconds, 2),
        **(flops_report(run["flops"], seconds, gemm_rates) if "flops" in run else {}),
        "profiled_steps": len(profiles),
        **(summarize_profiles(profiles, batch) if profiles else {}),
        "image_ids": run["image_ids"] if any(i is not None for ids in run["image_ids"] for i in ids) else None,
    }


def measure(args: argparse.Namespace, device: torch.device) -> tuple[list[dict], dict]:
    """Every implementation on the same batches, steps alternating between them: warm-up, the FLOP-count step,
    timed steps, profiled steps. -> (a summary per implementation, {"gemm": the reference GEMM's samples before
    and after the steps, "checkpoint": what --ckpt loaded})."""
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": None}[args.precision]
    autocast = torch.autocast(device.type, dtype=dtype, enabled=dtype is not None)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    with contextlib.ExitStack() as stack:
        detectors, checkpoint = detectors_and_feeds(
            args.setup, args.impl, args.batch, tuple(args.size), args.override, args.ckpt, device, stack
        )
        steps = {}
        for impl, (model, feed) in detectors.items():
            model = model.to(device).train()
            if args.channels_last:
                model = model.to(memory_format=torch.channels_last)
            optimizer = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9, weight_decay=1e-4)
            steps[impl] = (model, optimizer, feed)
        runs = {impl: {"times": [], "cpu_times": [], "profiles": [], "image_ids": []} for impl in steps}
        gemm = {"n": args.gemm_size, "threads": torch.get_num_threads(), "before": [], "after": []}
        if args.flops:
            gemm["before"] = gemm_flops_per_s(device, args.gemm_size, args.gemm_repeats)
        for _ in range(args.warmup):
            for impl, (model, optimizer, feed) in steps.items():
                runs[impl]["image_ids"].append(train_step(model, optimizer, feed, device, autocast))
        if args.flops:  # one more step, untimed, its FLOPs counted
            for impl, (model, optimizer, feed) in steps.items():
                counter = FlopCount()
                runs[impl]["image_ids"].append(train_step(model, optimizer, feed, device, autocast, counter.section))
                runs[impl]["flops"] = dict(counter.flops)
        for _ in range(args.steps):
            for impl, (model, optimizer, feed) in steps.items():
                sync()
                start, cpu_start = time.perf_counter(), time.process_time()
                runs[impl]["image_ids"].append(train_step(model, optimizer, feed, device, autocast))
                sync()
                runs[impl]["times"].append(time.perf_counter() - start)
                runs[impl]["cpu_times"].append(time.process_time() - cpu_start)  # what it used, not waited for
        for _ in range(args.profile_steps):
            for impl, (model, optimizer, feed) in steps.items():
                profiled = profiled_step(model, optimizer, feed, device, autocast)
                runs[impl]["image_ids"].append(profiled["image_ids"])
                runs[impl]["profiles"].append(profiled)
        if args.flops:
            gemm["after"] = gemm_flops_per_s(device, args.gemm_size, args.gemm_repeats)
    results = [summarize(impl, args.batch, run, gemm["before"] + gemm["after"]) for impl, run in runs.items()]
    gemm.update(before=[round(r, -6) for r in gemm["before"]], after=[round(r, -6) for r in gemm["after"]])
    return results, {"gemm": gemm if args.flops else None, "checkpoint": checkpoint}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--setup", default="r50_fpn", choices=["r50_fpn", "demo"])
    parser.add_argument("--impl", nargs="+", default=["ours", "torchvision"], choices=["ours", "torchvision"])
    parser.add_argument("--batch", type=int, default=None, help="images per step (default 8; demo: its batch 4)")
    parser.add_argument("--size", type=int, nargs=2, default=[800, 1333], metavar=("H", "W"), help="r50_fpn only")
    parser.add_argument(
        "--precision",
        default=None,
        choices=["bf16", "fp16", "fp32"],
        help="autocast dtype (default bf16; demo: fp32, as it trains)",
    )
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--ckpt", type=Path, help="demo only: start both from this train.py checkpoint's weights")
    parser.add_argument(
        "--override",
        nargs="*",
        default=[],
        metavar="KEY=VALUE",
        help="demo only: Hydra overrides of the demo config (e.g. data.module.num_workers=0)",
    )
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--profile-steps", type=int, default=1)
    parser.add_argument(
        "--flops",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="count a step's FLOPs (one more untimed step) and time the reference GEMM",
    )
    parser.add_argument("--gemm-size", type=int, default=2048, help="n of the n x n fp32 reference GEMM")
    parser.add_argument("--gemm-repeats", type=int, default=5, help="timing samples of it, before and after")
    parser.add_argument("--note", default="", help="free text stored in the JSON, e.g. what else ran on the machine")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    demo = args.setup == "demo"
    if not demo and (args.ckpt or args.override):
        parser.error("--ckpt and --override are for --setup demo")
    if args.steps < 1:
        parser.error("--steps must be >= 1 (the medians need a timed step)")
    if demo:
        cfg = demo_config(args.override)
        if args.batch:  # the loader makes the batches
            args.override = [*args.override, f"data.module.batch_size={args.batch}"]
        args.batch = args.batch or cfg.data.module.batch_size
        args.size = [cfg.data.image_min_size, cfg.data.image_max_size]  # recorded as run, not --size's default
        args.precision = (
            args.precision or {"32-true": "fp32", "bf16-mixed": "bf16", "16-mixed": "fp16"}[cfg.trainer.precision]
        )
    args.batch = args.batch or 8
    args.precision = args.precision or "bf16"
    device = torch.device(args.device)
    out = args.out or Path(f"bench/results/train_step_{device.type}{'_demo' if demo else ''}.json")

    load_at_start = list(os.getloadavg())
    results, facts = measure(args, device)
    for result in results:
        print(json.dumps({k: v for k, v in result.items() if k not in ("top_ops_ms", "image_ids")}))
    if len(results) == 2:
        ours, tv = results
        line = f"ours / torchvision: {ours['images_per_second'] / tv['images_per_second']:.2f}x img/s"
        if ours["profiled_steps"]:
            line += (f"; RoI ops {ours['roi_ops_share']:.1%} vs {tv['roi_ops_share']:.1%} of the profiled self time"
                     f"; mask RoIs per image {ours['mask_rois_per_image']}")  # fmt: skip
        print(line)
    report = {
        "machine": device_description(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "float32_matmul_precision": torch.get_float32_matmul_precision(),
        "note": args.note,
        "load_average_at_start": load_at_start,
        "load_average_at_end": list(os.getloadavg()),
        "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items() if k != "out"},
        "checkpoint": facts["checkpoint"],
        "gemm": facts["gemm"],
        "results": results,
    }
    write_json(out, report)
    return report


if __name__ == "__main__":
    main()
