"""Benchmark our RoI ops against torchvision.ops on a Mask R-CNN FPN-like workload.

Workload: 2 images of 800x1088, 256 channels, FPN maps at strides 4/8/16/32, 512 random realistic boxes per
image mapped to levels with floor(4 + log2(sqrt(area) / 224) + eps) clamped to [2, 5]. Outputs 7x7 (box
head) and 14x14 (mask head). Three ways to pool it:

* ours / tv: one op call per level on rois already grouped by level (as MultiScaleRoIAlign does, minus the
  cost of its grouping, which neither side pays here). Ours runs with ``validate=False``, as the detector
  calls it: the box-value check reads the boxes back to the host (a sync per call on a GPU), and torchvision
  does not check them either;
* fused: one ``ops.multilevel_roi`` call for all levels, rois in their original order with a level per RoI.

    python -m bench.roi_ops --device cpu --dtype float32 --repeat 3

Prints a table (ms, speed-up = torchvision / ours) and writes bench/results/roi_ops_<device>.json
(roi_ops_<device>_<dtype>.json for dtypes other than float32). Boxes are float32 for bfloat16 features
(as under autocast; ``ops`` uses them in float32) and in the feature dtype for torchvision, which needs that.

Memory bandwidth: these ops are memory-bound, so each row also gives the effective bandwidth of our fused
call as a fraction of the device's measured copy bandwidth (``x.copy_(y)`` of 256 MiB, read + write). The
traffic counted is the compulsory one: forward reads every feature map once and writes the output; backward
reads the output gradient and writes the input gradient of every map. A fraction near 1 means the op is at
the physical limit; gathers from a feature map read more than the compulsory bytes, so it stays below.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import time
from pathlib import Path

import torch
import torchvision

import ops

STRIDES = (4, 8, 16, 32)
IMAGE_HW = (800, 1088)
RESULTS = Path(__file__).resolve().parent / "results"


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


def measure(call, feats, device, repeat):
    """Median ms of ``call(feats)`` (a list of outputs), forward and forward + backward."""
    fwd = time_it(lambda: call(feats), device, repeat)
    leaves = [f.detach().requires_grad_() for f in feats]
    grads = [torch.randn_like(o) for o in call(leaves)]

    def fwd_bwd():
        for f in leaves:
            f.grad = None
        torch.autograd.backward(call(leaves), grads)

    return fwd, time_it(fwd_bwd, device, repeat)


def machine(device):
    cpu = platform.processor()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {
        "cpu_model": cpu,
        "cpu_cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "load_average_at_start": os.getloadavg(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "python": platform.python_version(),
    }


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--out", default=None, help="JSON path (default bench/results/roi_ops_<device>.json)")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype)
    info = machine(device)
    feats, per_level, rois, levels = make_workload(device, dtype)
    rois_per_level = [int(r.shape[0]) for r in per_level]
    copy_gbs = copy_bandwidth(device, args.repeat)
    print(f"device={device} dtype={args.dtype} repeat={args.repeat} rois per level (P2..P5)={rois_per_level}")
    print(
        f"machine: {info['cpu_model']}, {info['cpu_cores']} cores, torch {info['torch']}, "
        f"load avg {info['load_average_at_start'][0]:.2f}" + (f", GPU {info['gpu']}" if info["gpu"] else "")
    )
    print(f"measured copy bandwidth: {copy_gbs:.1f} GB/s")
    header = (
        f"{'case':30s} {'ours fwd':>9s} {'tv fwd':>9s} {'x':>5s} {'ours f+b':>9s} {'tv f+b':>9s} {'x':>5s}"
        f" {'fused fwd':>9s} {'fused f+b':>9s} {'bw f+b':>6s}"
    )
    print(header)
    print("-" * len(header))
    rows = []
    for name, out, ours, tv, fused in cases():
        o_f, o_fb = measure(lambda fs, fn=ours: per_level_calls(fn, fs, per_level), feats, device, args.repeat)
        try:
            t_f, t_fb = measure(lambda fs, fn=tv: per_level_calls(fn, fs, per_level), feats, device, args.repeat)
        except RuntimeError as exc:  # e.g. a dtype torchvision does not support on this device
            print(f"{name}: torchvision failed: {str(exc).splitlines()[0]}")
            t_f = t_fb = float("nan")
        f_f, f_fb = measure(lambda fs, fn=fused: fn(fs, rois, levels), feats, device, args.repeat)
        fwd_bytes, fwd_bwd_bytes = compulsory_bytes(feats, rois, out)
        row = {
            "case": name,
            "ours_fwd_ms": o_f,
            "tv_fwd_ms": t_f,
            "speedup_fwd": t_f / o_f,
            "ours_fwd_bwd_ms": o_fb,
            "tv_fwd_bwd_ms": t_fb,
            "speedup_fwd_bwd": t_fb / o_fb,
            "fused_fwd_ms": f_f,
            "fused_fwd_bwd_ms": f_fb,
            "fused_fwd_bandwidth_fraction": fwd_bytes / (f_f * 1e-3) / 1e9 / copy_gbs,
            "fused_fwd_bwd_bandwidth_fraction": fwd_bwd_bytes / (f_fb * 1e-3) / 1e9 / copy_gbs,
        }
        rows.append(row)
        print(
            f"{name:30s} {o_f:9.1f} {t_f:9.1f} {t_f / o_f:5.2f} {o_fb:9.1f} {t_fb:9.1f} {t_fb / o_fb:5.2f}"
            f" {f_f:9.1f} {f_fb:9.1f} {row['fused_fwd_bwd_bandwidth_fraction']:6.3f}"
        )
    RESULTS.mkdir(parents=True, exist_ok=True)
    suffix = "" if args.dtype == "float32" else f"_{args.dtype}"
    out = Path(args.out) if args.out else RESULTS / f"roi_ops_{args.device}{suffix}.json"
    info["load_average_at_end"] = os.getloadavg()
    result = {
        "device": args.device,
        "dtype": args.dtype,
        "repeat": args.repeat,
        "machine": info,
        "copy_bandwidth_gb_s": copy_gbs,
        "workload": {
            "images": 2,
            "channels": 256,
            "image_hw": IMAGE_HW,
            "strides": STRIDES,
            "rois_per_image": 512,
            "rois_per_level": rois_per_level,
        },
        "results": rows,
    }
    out.write_text(json.dumps(result, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
