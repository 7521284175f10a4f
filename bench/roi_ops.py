"""Benchmark our RoI ops against torchvision.ops on a Mask R-CNN FPN-like workload, NCHW and channels_last.

Workload: 2 images of 800x1088, 256 channels, FPN maps at strides 4/8/16/32, 512 random realistic boxes per
image mapped to levels with floor(4 + log2(sqrt(area) / 224) + eps) clamped to [2, 5]. Outputs 7x7 (box
head) and 14x14 (mask head). Three ways to pool it, each on NCHW maps and on channels_last maps:

* ours / tv: one op call per level on rois already grouped by level (as MultiScaleRoIAlign does, minus the
  cost of its grouping, which neither side pays here). Ours runs with ``validate=False``, as the detector
  calls it: the box-value check reads the boxes back to the host (a sync per call on a GPU), and torchvision
  does not check them either. torchvision's CPU kernels make channels_last input contiguous first;
* fused: one ``ops.multilevel_roi`` call for all levels, rois in their original order with a level per RoI.

    python -m bench.roi_ops --device cpu --repeat 5 --note "machine shared with a training job"
    python -m bench.roi_ops --device cpu --nchw-kernels      # which CPU kernels win on NCHW maps, and where

Timing: every round times each way once, forward then forward + backward, one after the other (interleaved),
so a slow spell of a shared machine hits all of them; the first round only warms up. Reported: medians over
the rounds and their spread (min, max), and the speed-up torchvision / ours as the median of the per-round
ratios. Our ops run on torch's intra-op threads (``--threads``, default torch's), torchvision's CPU kernels on
one thread.

Memory bandwidth: each round also times a copy (``x.copy_(y)`` of 256 MiB, read + write), and the fused rows give
the effective bandwidth of the fused call as a fraction of that round's copy bandwidth. The traffic counted is
the compulsory one: forward reads every feature map once and writes the output; backward reads the output
gradient and writes the input gradient of every map. A fraction near 1 means the op is at the physical limit.

``--nchw-kernels`` times the fused call on NCHW maps with each of the two CPU kernels for that layout
(``ROI_OPS_NCHW_KERNEL=planes|blocked``, see ops/csrc/cpu/layout.h) against the automatic choice, over RoI counts
from sparse to dense, and on the mask-target crop (1 channel).

Writes bench/results/roi_ops_<device>_<machine>.json (``_<dtype>`` added for dtypes other than float32): one file
per machine, with the CPU model, vector ISA, thread count and load averages in it.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import platform
import re
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torchvision

import ops
from bench.report import write_json

STRIDES = (4, 8, 16, 32)
IMAGE_HW = (800, 1088)
RESULTS = Path(__file__).resolve().parent / "results"
LAYOUTS = ("nchw", "channels_last")


def make_workload(device, dtype, channels=256, images=2, rois_per_image=512, seed=0):
    g = torch.Generator().manual_seed(seed)
    H, W = IMAGE_HW
    feats = [
        torch.randn(images, channels, H // s, W // s, generator=g).to(device=device, dtype=dtype)
        for s in STRIDES
    ]
    boxes = []
    for i in range(images):
        side = torch.exp(torch.empty(rois_per_image).uniform_(math.log(16), math.log(800), generator=g))
        aspect = torch.exp(torch.empty(rois_per_image).uniform_(math.log(0.5), math.log(2.0), generator=g))
        bw, bh = side * aspect.sqrt(), side / aspect.sqrt()
        cx = torch.rand(rois_per_image, generator=g) * W
        cy = torch.rand(rois_per_image, generator=g) * H
        b = torch.stack([cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2], 1)
        b[:, 0::2] = b[:, 0::2].clamp(0, W)
        b[:, 1::2] = b[:, 1::2].clamp(0, H)
        boxes.append(torch.cat([torch.full((rois_per_image, 1), float(i)), b], 1))
    rois = torch.cat(boxes)
    area = (rois[:, 3] - rois[:, 1]) * (rois[:, 4] - rois[:, 2])
    lvl = torch.floor(4 + torch.log2(area.clamp(min=1e-6).sqrt() / 224) + 1e-6).clamp(2, 5).long() - 2
    per_level = [rois[lvl == i].to(device=device) for i in range(len(STRIDES))]
    return feats, per_level, rois.to(device), lvl.to(device)


def in_layout(feats, layout):
    fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
    return [f.contiguous(memory_format=fmt) for f in feats]


def per_level_calls(fn, feats, per_level):
    return [fn(f, r, 1.0 / s) for f, r, s in zip(feats, per_level, STRIDES, strict=True)]


def fused_call(kind, out, sr):
    scales = [1.0 / s for s in STRIDES]
    return lambda feats, rois, levels: [
        ops.multilevel_roi(feats, rois, levels, out, scales, kind, sr, aligned=True, validate=False)
    ]


def copy_bandwidth(device, repeat, mib=256):
    """Measured device copy bandwidth in GB/s (bytes read + bytes written per second)."""
    src = torch.empty(mib << 20, dtype=torch.uint8, device=device).random_()
    dst = torch.empty_like(src)
    ms = time_it(lambda: dst.copy_(src), device, max(repeat, 5))
    return 2 * src.numel() / (ms * 1e-3) / 1e9


def compulsory_bytes(feats, rois, out):
    """Forward and forward+backward compulsory traffic in bytes (see the module docstring)."""
    maps = sum(f.numel() * f.element_size() for f in feats)
    output = rois.shape[0] * feats[0].shape[1] * out * out * feats[0].element_size()
    return maps + output, 2 * (maps + output)


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def time_it(run, device, repeat):
    run()  # warm-up
    sync(device)
    ts = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        run()
        sync(device)
        ts.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(ts)


def cases():
    """(name, output side, ours per level, torchvision per level, ours fused)."""
    for out in (7, 14):
        for sr in (2, 0):
            yield (
                f"roi_align avg aligned {out}x{out} sr={sr}",
                out,
                lambda x, r, s, out=out, sr=sr: ops.roi_align(x, r, out, s, sr, aligned=True, validate=False),
                lambda x, r, s, out=out, sr=sr: torchvision.ops.roi_align(
                    x, r.to(x.dtype), out, s, sr, aligned=True
                ),
                fused_call("align", out, sr),
            )
    for out in (7, 14):
        yield (
            f"roi_pool {out}x{out}",
            out,
            lambda x, r, s, out=out: ops.roi_pool(x, r, out, s, validate=False),
            lambda x, r, s, out=out: torchvision.ops.roi_pool(x, r.to(x.dtype), out, s),
            fused_call("pool", out, 0),
        )


class Way:
    """One way to pool the workload: ``call(feats)`` -> list of outputs; forward and forward + backward."""

    def __init__(self, call: Callable, feats: list[torch.Tensor], device: torch.device, env: dict | None = None):
        self.call, self.feats, self.device, self.env = call, feats, device, env or {}
        self.leaves = [f.detach().requires_grad_() for f in feats]
        with self._environment():
            self.grads = [torch.randn_like(o) for o in call(self.leaves)]

    @contextlib.contextmanager
    def _environment(self):
        saved = {k: os.environ.get(k) for k in self.env}
        os.environ.update(self.env)
        try:
            yield
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v

    def forward(self):
        self.call(self.feats)

    def forward_backward(self):
        for f in self.leaves:
            f.grad = None
        torch.autograd.backward(self.call(self.leaves), self.grads)

    def time(self) -> tuple[float, float]:
        """ms of one forward and of one forward + backward."""
        with self._environment():
            sync(self.device)
            t0 = time.perf_counter()
            self.forward()
            sync(self.device)
            t1 = time.perf_counter()
            self.forward_backward()
            sync(self.device)
            return (t1 - t0) * 1e3, (time.perf_counter() - t1) * 1e3


def measure(call, feats, device, repeat):
    """Median ms of ``call(feats)`` (a list of outputs), forward and forward + backward."""
    way = Way(call, feats, device)
    way.time()  # warm-up
    times = [way.time() for _ in range(repeat)]
    return statistics.median(t[0] for t in times), statistics.median(t[1] for t in times)


def interleaved(ways: dict[str, Way], rounds: int, copy: Callable[[], float] | None = None) -> dict:
    """Per way and part (fwd, fwd_bwd): the ms of every round after the first (warm-up), and the copy GB/s."""
    times = {(name, part): [] for name in ways for part in ("fwd", "fwd_bwd")}
    copies = []
    for r in range(rounds + 1):
        if copy is not None:
            gbs = copy()
        for name, way in ways.items():
            f, fb = way.time()
            if r > 0:
                times[name, "fwd"].append(f)
                times[name, "fwd_bwd"].append(fb)
        if r > 0 and copy is not None:
            copies.append(gbs)
    return {"times": times, "copy_gb_s": copies}


def spread(ts: list[float]) -> dict:
    return {"median": statistics.median(ts), "min": min(ts), "max": max(ts)}


def ratio(num: list[float], den: list[float]) -> dict:
    """num / den per round: median and spread."""
    return spread([a / b for a, b in zip(num, den, strict=True)])


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or "unknown"


def machine(device):
    return {
        "cpu_model": cpu_model(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "cpu_cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "load_average_at_start": os.getloadavg(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "python": platform.python_version(),
    }


def machine_slug(info: dict) -> str:
    name = info["gpu"] or info["cpu_model"]
    name = re.sub(r"\((r|tm)\)|processor|cpu|@.*", "", name, flags=re.IGNORECASE)
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "unknown"


def compare(device, dtype, rounds) -> list[dict]:
    """Every case on both layouts: ours / torchvision / fused, interleaved, with the copy bandwidth per round."""
    base, per_level, rois, levels = make_workload(device, dtype)
    src = torch.empty(256 << 20, dtype=torch.uint8, device=device).random_()
    dst = torch.empty_like(src)

    def copy():
        sync(device)
        t0 = time.perf_counter()
        dst.copy_(src)
        sync(device)
        return 2 * src.numel() / (time.perf_counter() - t0) / 1e9

    header = (
        f"{'case':30s} {'layout':13s} {'ours fwd':>9s} {'tv fwd':>9s} {'x':>5s} {'ours f+b':>9s} {'tv f+b':>9s}"
        f" {'x':>5s} {'fused fwd':>9s} {'fused f+b':>9s} {'bw fwd':>6s} {'bw f+b':>6s}"
    )
    print(header + "\n" + "-" * len(header))
    rows = []
    for name, out, ours, tv, fused in cases():
        for layout in LAYOUTS:
            feats = in_layout(base, layout)
            ways = {
                "ours": Way(lambda fs, fn=ours: per_level_calls(fn, fs, per_level), feats, device),
                "tv": Way(lambda fs, fn=tv: per_level_calls(fn, fs, per_level), feats, device),
                "fused": Way(lambda fs, fn=fused: fn(fs, rois, levels), feats, device),
            }
            run = interleaved(ways, rounds, copy)
            t = run["times"]
            fwd_bytes, fwd_bwd_bytes = compulsory_bytes(feats, rois, out)
            gbs = run["copy_gb_s"]
            row = {"case": name, "layout": layout, "load_average": os.getloadavg()}
            for way in ways:
                for part in ("fwd", "fwd_bwd"):
                    row[f"{way}_{part}_ms"] = spread(t[way, part])
            for part in ("fwd", "fwd_bwd"):
                row[f"speedup_{part}"] = ratio(t["tv", part], t["ours", part])
            row["copy_bandwidth_gb_s"] = spread(gbs)
            for part, nbytes in (("fwd", fwd_bytes), ("fwd_bwd", fwd_bwd_bytes)):
                row[f"fused_{part}_bandwidth_fraction"] = spread(
                    [nbytes / (ms * 1e-3) / 1e9 / bw for ms, bw in zip(t["fused", part], gbs, strict=True)]
                )
            rows.append(row)
            med = {k: v["median"] for k, v in row.items() if isinstance(v, dict)}
            print(
                f"{name:30s} {layout:13s} {med['ours_fwd_ms']:9.1f} {med['tv_fwd_ms']:9.1f} {med['speedup_fwd']:5.2f}"
                f" {med['ours_fwd_bwd_ms']:9.1f} {med['tv_fwd_bwd_ms']:9.1f} {med['speedup_fwd_bwd']:5.2f}"
                f" {med['fused_fwd_ms']:9.1f} {med['fused_fwd_bwd_ms']:9.1f}"
                f" {med['fused_fwd_bandwidth_fraction']:6.3f} {med['fused_fwd_bwd_bandwidth_fraction']:6.3f}",
                flush=True,
            )
    return rows


def nchw_kernels(device, dtype, rounds) -> list[dict]:
    """The fused RoIAlign 7x7 / RoIPool 7x7 call on NCHW maps with each CPU kernel, sparse to dense rois, and the
    mask-target crop (one channel): where does each kernel win, and what does the automatic choice pick?"""
    rows = []
    feats, _, rois, levels = make_workload(device, dtype)
    pixels = sum(f.shape[0] * f.shape[2] * f.shape[3] for f in feats)
    workloads = []
    for count in (16, 64, 256, 1024):
        pick = torch.randperm(rois.shape[0], generator=torch.Generator().manual_seed(count))[:count]
        for kind in ("align", "pool"):
            call = fused_call(kind, 7, 2)
            workloads.append(
                (f"{kind} 7x7, {count} rois, C=256", count * 49 / pixels, feats,
                 lambda fs, call=call, r=rois[pick], lv=levels[pick]: call(fs, r, lv))
            )
    g = torch.Generator().manual_seed(1)
    masks = (torch.rand(10, 1, 256, 256, generator=g) > 0.5).to(dtype)  # 10 GT masks of a 256 px image
    boxes = torch.rand(64, 2, generator=g) * 200
    crop_rois = torch.cat([torch.randint(0, 10, (64, 1), generator=g).to(dtype), boxes, boxes + 40], 1)
    workloads.append(
        ("mask-target crop 28x28, 64 rois, C=1", 64 * 784 / (10 * 256 * 256), [masks],
         lambda fs: [ops.roi_align(fs[0], crop_rois, 28, 1.0, 0, True, validate=False)])
    )
    for name, bins_per_pixel, fs, call in workloads:
        ways = {k: Way(call, fs, device, {"ROI_OPS_NCHW_KERNEL": k}) for k in ("auto", "planes", "blocked")}
        t = interleaved(ways, rounds)["times"]
        row = {"workload": name, "bins_per_pixel": bins_per_pixel, "load_average": os.getloadavg()}
        for way in ways:
            for part in ("fwd", "fwd_bwd"):
                row[f"{way}_{part}_ms"] = spread(t[way, part])
        for part in ("fwd", "fwd_bwd"):
            row[f"planes_over_blocked_{part}"] = ratio(t["planes", part], t["blocked", part])
        rows.append(row)
        print(
            f"{name:38s} bins/px {bins_per_pixel:6.3f}  fwd planes / blocked"
            f" {row['planes_over_blocked_fwd']['median']:5.2f}  f+b {row['planes_over_blocked_fwd_bwd']['median']:5.2f}"
            f"  auto f+b {row['auto_fwd_bwd_ms']['median']:8.1f} ms",
            flush=True,
        )
    return rows


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument("--repeat", type=int, default=5, help="timed rounds (after one warm-up round)")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    p.add_argument("--nchw-kernels", action="store_true", help="compare the CPU kernels for NCHW maps instead")
    p.add_argument("--note", default="", help="free text stored in the JSON, e.g. what else ran on the machine")
    p.add_argument("--out", default=None, help="JSON path (default bench/results/roi_ops_<device>_<machine>.json)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype)
    info = machine(device)
    print(
        f"device={device} dtype={args.dtype} rounds={args.repeat}; machine: {info['cpu_model']} "
        f"({info['cpu_capability']}), {info['cpu_cores']} cores, {info['torch_threads']} threads, "
        f"torch {info['torch']}, load avg {info['load_average_at_start'][0]:.2f}"
        + (f", GPU {info['gpu']}" if info["gpu"] else "")
    )
    record = {"device": args.device, "dtype": args.dtype, "repeat": args.repeat, "note": args.note, "machine": info}
    if args.nchw_kernels:
        record["nchw_kernels"] = nchw_kernels(device, dtype, args.repeat)
        default = f"roi_ops_nchw_kernels_{args.device}_{machine_slug(info)}"
    else:
        _, per_level, _, _ = make_workload(device, dtype, channels=1)
        record["workload"] = {
            "images": 2,
            "channels": 256,
            "image_hw": IMAGE_HW,
            "strides": STRIDES,
            "rois_per_image": 512,
            "rois_per_level": [int(r.shape[0]) for r in per_level],
        }
        record["results"] = compare(device, dtype, args.repeat)
        default = f"roi_ops_{args.device}_{machine_slug(info)}"
    info["load_average_at_end"] = os.getloadavg()
    suffix = "" if args.dtype == "float32" else f"_{args.dtype}"
    write_json(Path(args.out) if args.out else RESULTS / f"{default}{suffix}.json", record)
    return record


if __name__ == "__main__":
    main()
