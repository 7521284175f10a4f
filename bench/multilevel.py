"""The FPN RoI extractor's op calls three ways, on the bench.roi_ops workload (RoIAlign, aligned, sampling 2):

* fused:       one ``ops.multilevel_roi`` call, rois in their own order with a level per RoI (what the RoI
               heads run since the fused op exists);
* grouped:     sort the rois by level, one ``ops.roi_align`` call per level, concatenate, unsort (what the
               RoI heads ran before; one host sync for the group sizes on a GPU);
* per level:   one ``ops.roi_align`` call per level on rois grouped beforehand, for free (a lower bound for
               any per-level scheme).

The three are timed interleaved (fused, grouped, per level, fused, ...) so that a slow spell of a shared
machine hits them alike; medians are reported.

    python -m bench.multilevel --device cpu --repeat 9

Writes bench/results/multilevel_<device>_<machine>.json (one file per machine).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

import torch

import ops
from bench.report import write_json
from bench.roi_ops import RESULTS, STRIDES, machine, machine_slug, make_workload, sync
from roi_heads.contract import pool_by_level

SCALES = [1.0 / s for s in STRIDES]


def fused(feats, rois, levels, per_level, out):
    return [ops.multilevel_roi(feats, rois, levels, out, SCALES, "align", 2, True, validate=False)]


def grouped(feats, rois, levels, per_level, out):
    pool = lambda f, group, scale: ops.roi_align(f, group, out, scale, 2, True, validate=False)  # noqa: E731
    return [pool_by_level(pool, feats, rois, levels, SCALES)]


def per_level(feats, rois, levels, per_level, out):
    return [
        ops.roi_align(f, r, out, scale, 2, True, validate=False)
        for f, r, scale in zip(feats, per_level, SCALES, strict=True)
    ]


WAYS = {"fused": fused, "grouped": grouped, "per_level": per_level}


def run(device: torch.device, repeat: int, dtype=torch.float32, **workload) -> list[dict]:
    """Median forward and forward+backward ms of each way, at outputs 7x7 and 14x14."""
    feats, levels_rois, rois, levels = make_workload(device, dtype, **workload)
    leaves = [f.detach().requires_grad_() for f in feats]
    rows = []
    for out in (7, 14):
        args = (rois, levels, levels_rois, out)
        grads = {name: [torch.randn_like(o) for o in way(leaves, *args)] for name, way in WAYS.items()}
        times = {(name, part): [] for name in WAYS for part in ("fwd", "fwd_bwd")}
        for _ in range(repeat + 1):  # the first round warms up and is dropped
            for name, way in WAYS.items():
                sync(device)
                t0 = time.perf_counter()
                way(feats, *args)
                sync(device)
                t1 = time.perf_counter()
                for f in leaves:
                    f.grad = None
                torch.autograd.backward(way(leaves, *args), grads[name])
                sync(device)
                t2 = time.perf_counter()
                times[name, "fwd"].append((t1 - t0) * 1e3)
                times[name, "fwd_bwd"].append((t2 - t1) * 1e3)
        row = {"output": f"{out}x{out}"}
        for (name, part), ts in times.items():
            row[f"{name}_{part}_ms"] = statistics.median(ts[1:])
        rows.append(row)
    return rows


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--repeat", type=int, default=9)
    p.add_argument("--out", default=None, help="JSON path (default bench/results/multilevel_<device>_<machine>.json)")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    info = machine(device)
    rows = run(device, args.repeat)
    print(f"device={device} repeat={args.repeat}, medians in ms (fwd / fwd+bwd)")
    for row in rows:
        cells = [f"{name} {row[f'{name}_fwd_ms']:.1f} / {row[f'{name}_fwd_bwd_ms']:.1f}" for name in WAYS]
        ratio = row["grouped_fwd_bwd_ms"] / row["fused_fwd_bwd_ms"]
        print(f"{row['output']}: " + ", ".join(cells) + f"; grouped / fused (fwd+bwd) {ratio:.2f}x")
    info["load_average_at_end"] = os.getloadavg()
    record = {"device": args.device, "repeat": args.repeat, "machine": info, "results": rows}
    default = RESULTS / f"multilevel_{args.device}_{machine_slug(info)}.json"
    write_json(Path(args.out) if args.out else default, record)
    return record


if __name__ == "__main__":
    main()
