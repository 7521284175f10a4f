"""Misalignment probe: how far from the true bin centre does each RoI op look, in input pixels?

Shapes: R RoIs, P = ph * pw output bins per RoI, S strides.

Convention (continuous image coordinates, as torchvision boxes use them): pixel ``i`` covers ``[i, i + 1)``;
feature cell ``(h, w)`` at stride ``s`` covers ``[w*s, (w+1)*s) x [h*s, (h+1)*s)``, so its centre sits at
``((w + 0.5) * s, (h + 0.5) * s)``. That is the convention under which ``aligned=True`` (``c * scale - 0.5``)
is exact. The probe feeds a 4-channel feature map that encodes this centre::

    channel 0 =  x,  channel 1 = -x,  channel 2 =  y,  channel 3 = -y

Bilinear interpolation of a linear ramp returns the ramp at the sample point, and every RoI stays a margin
away from the map border (no clamping), so each op's output tells where it looked:

* avg ops (pool_mode="avg"): channel 0 / 2 is the mean sample position = the bin's centre as the op sees it.
* max ops (pool_mode="max", RoIPool included): the max of ``x`` is the bin's right-most sampled position and the max of
  ``-x`` minus the left-most, so ``(max(x) - max(-x)) / 2`` is the centre of the bin's support (for pool:
  the centre of its quantized cells; for bilinear max ops: the centre of the sample grid).

The error of a bin is the Euclidean distance between that centre and the true centre of the bin of the
continuous RoI, ``x1 + (j + 0.5) * (x2 - x1) / pw`` (same for y). RoIs are seeded, log-uniform in width and
height (small to large) and uniform in position.

    python -m maskrcnn.analysis.misalignment_probe --num-rois 2000 --out-dir results/
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path
from typing import Any

import torch
from hydra.utils import instantiate
from torch import Tensor

from maskrcnn.analysis.variants import BASELINE, rank, style
from maskrcnn.roi_config import builtin_variants, constructor_config

STRIDES = (4, 8, 16, 32)


def coordinate_features(image_size: int, stride: int) -> Tensor:
    """[1, 4, H, W] float32 with H = W = image_size / stride: (x, -x, y, -y) of every cell centre in px."""
    n = image_size // stride
    centres = (torch.arange(n, dtype=torch.float64) + 0.5) * stride
    x = centres.expand(n, n)
    y = x.t()
    return torch.stack([x, -x, y, -y]).unsqueeze(0).float()


def random_rois(num: int, image_size: int, margin: float, seed: int,
                min_size: float = 8.0, max_size: float = 512.0) -> Tensor:
    """[num, 5] float64 (batch 0, x1, y1, x2, y2): sides log-uniform in [min_size, max_size], kept `margin`
    px inside the image so no sample of any op reaches the border (where bilinear clamping bends the ramp)."""
    max_size = min(max_size, image_size - 2 * margin)  # every RoI must fit inside the margins
    if max_size < min_size:
        raise ValueError(f"image_size={image_size} leaves no room for {min_size} px RoIs with margin {margin}")
    g = torch.Generator().manual_seed(seed)
    log_lo, log_hi = math.log(min_size), math.log(max_size)
    wh = torch.exp(log_lo + (log_hi - log_lo) * torch.rand(num, 2, generator=g, dtype=torch.float64))
    room = image_size - 2 * margin - wh
    xy1 = margin + room * torch.rand(num, 2, generator=g, dtype=torch.float64)
    return torch.cat([torch.zeros(num, 1, dtype=torch.float64), xy1, xy1 + wh], dim=1)


def true_bin_centres(rois: Tensor, output_size: int) -> tuple[Tensor, Tensor]:
    """rois [R, 5] -> (cx [R, 1, pw], cy [R, ph, 1]): centres of the bins of the continuous RoI, in px."""
    frac = (torch.arange(output_size, dtype=torch.float64) + 0.5) / output_size
    cx = rois[:, 1:2] + frac * (rois[:, 3:4] - rois[:, 1:2])
    cy = rois[:, 2:3] + frac * (rois[:, 4:5] - rois[:, 2:3])
    return cx[:, None, :], cy[:, :, None]


def probe_variants(sampling_ratio: int | None = None) -> dict[str, dict[str, Any]]:
    """{name: roi config} of the built-in variants of our op (configs/roi, `_target_: roi_heads.RoIOp`), in the
    reports' order. sampling_ratio, when given, replaces the warp and align variants' own."""
    variants = {}
    for name, roi in sorted(builtin_variants().items(), key=lambda kv: rank(kv[0])):
        if roi["_target_"] == "roi_heads.RoIOp":
            variants[name] = dict(roi)
            if sampling_ratio is not None and roi["kind"] != "pool":
                variants[name]["sampling_ratio"] = sampling_ratio
    return variants


def bin_errors(roi: dict[str, Any], stride: int, rois: Tensor, image_size: int, output_size: int = 7) -> Tensor:
    """Per-bin error in px, [R, ph, pw], of the op of the `roi` config (as the model runs it) at `stride` for
    rois [R, 5] (image px)."""
    feature = coordinate_features(image_size, stride)
    op = instantiate(constructor_config(roi)[0])
    out = op(feature, rois.float(), output_size, 1.0 / stride).double()
    if roi["pool_mode"] == "max":
        x, y = (out[:, 0] - out[:, 1]) / 2, (out[:, 2] - out[:, 3]) / 2
    else:
        x, y = out[:, 0], out[:, 2]
    cx, cy = true_bin_centres(rois, output_size)
    return torch.hypot(x - cx, y - cy)


def probe(num_rois: int, variants: dict[str, dict[str, Any]] | None = None, strides: tuple[int, ...] = STRIDES,
          output_size: int = 7, image_size: int = 1024, seed: int = 0) -> dict[str, dict[int, dict[str, float]]]:
    """{variant name: {stride: {"mean", "std", "max", "mean_over_stride"}}} over all bins of `num_rois` random
    RoIs, for variants {name: roi config} (default: probe_variants())."""
    rois = random_rois(num_rois, image_size, margin=2.0 * max(strides), seed=seed)
    table: dict[str, dict[int, dict[str, float]]] = {}
    for name, roi in (probe_variants() if variants is None else variants).items():
        table[name] = {}
        for stride in strides:
            err = bin_errors(roi, stride, rois, image_size, output_size).flatten()
            table[name][stride] = {
                "mean": err.mean().item(),
                "std": err.std().item() if err.numel() > 1 else 0.0,
                "max": err.max().item(),
                "mean_over_stride": err.mean().item() / stride,
            }
    return table


def markdown(table: dict[str, dict[int, dict[str, float]]], args: argparse.Namespace) -> str:
    strides = list(next(iter(table.values())))
    sampling = "each variant's own (configs/roi)" if args.sampling_ratio is None else str(args.sampling_ratio)
    command = f"python -m maskrcnn.analysis.misalignment_probe --num-rois {args.num_rois} --out-dir {args.out_dir}"
    lines = [
        "# Misalignment of RoI feature extractors",
        "",
        f"Mean ± std (over all bins of {args.num_rois} random RoIs, seed {args.seed}) of the distance in input "
        f"pixels between where each {args.output_size}x{args.output_size} output bin looks and the true centre "
        f"of that bin of the RoI; sampling ratio: {sampling}. Produced by `{command}`; the method is in the "
        "module docstring.",
        "",
        "| op | " + " | ".join(f"stride {s}" for s in strides) + " |",
        "|---|" + "---:|" * len(strides),
    ]
    for name, row in table.items():
        lines.append(f"| {name} | " + " | ".join(f"{row[s]['mean']:.2f} ± {row[s]['std']:.2f}" for s in strides)
                     + " |")
    notes = []
    if BASELINE in table:
        ratios = [table[BASELINE][s]["mean_over_stride"] for s in strides]
        notes.append(f"- {style(BASELINE).label}'s error is {min(ratios):.2f}-{max(ratios):.2f} strides at every "
                     "stride: it grows with the feature cell (rounding, plus the +1 cell of its size).")
    # float32 rounding of coordinates up to 1024 px is ~1e-4 px; a quantizing op is off by whole pixels.
    exact = {name: max(row[s]["max"] for s in strides) for name, row in table.items()}
    exact = {name: worst for name, worst in exact.items() if worst < 1e-3}
    if exact:
        notes.append(f"- Exact up to float32 rounding: {', '.join(exact)} (largest single-bin error "
                     f"{max(exact.values()):.1e} px).")
    return "\n".join(lines + [""] + notes) + "\n"


def plot(table: dict[str, dict[int, dict[str, float]]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.4), dpi=150)
    for k, (name, row) in enumerate(table.items()):
        v = style(name)
        strides = list(row)
        # Dodge each op sideways (log axis) so coinciding curves (e.g. the avg and max forms of one op) stay visible.
        xs = [s * 2 ** (0.04 * (k - (len(table) - 1) / 2)) for s in strides]
        ax.errorbar(xs, [row[s]["mean"] for s in strides], yerr=[row[s]["std"] for s in strides],
                    label=f"{name}: {v.label}", color=v.color, marker=v.marker, ls=v.linestyle, capsize=3, lw=1.6,
                    ms=5)
    ax.set_xscale("log", base=2)
    ax.set_xticks(strides, [str(s) for s in strides])
    ax.set_xlabel("feature stride (px)")
    ax.set_ylabel("bin-centre error (input px), mean ± std")
    ax.set_title("Where each RoI op looks vs. where it should")
    ax.grid(alpha=0.3)
    ax.legend(frameon=False, fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--num-rois", type=int, default=2000)
    parser.add_argument("--out-dir", type=Path, default=Path("results"))
    parser.add_argument("--output-size", type=int, default=7)
    parser.add_argument("--sampling-ratio", type=int, default=None,
                        help="replaces the warp/align variants' own (configs/roi); <= 0 for adaptive")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    start = time.monotonic()
    variants = probe_variants(args.sampling_ratio)
    table = probe(args.num_rois, variants, STRIDES, args.output_size, seed=args.seed)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    text = markdown(table, args)
    (args.out_dir / "misalignment.md").write_text(text)
    record = {"num_rois": args.num_rois, "output_size": args.output_size,
              "sampling_ratio": {name: roi["sampling_ratio"] for name, roi in variants.items()},
              "seed": args.seed, "units": "input pixels", "errors": table}
    (args.out_dir / "misalignment.json").write_text(json.dumps(record, indent=2) + "\n")
    plot(table, args.out_dir / "figures" / "misalignment.png")
    print(text)
    print(f"wrote {args.out_dir}/misalignment.md, misalignment.json, figures/misalignment.png "
          f"in {time.monotonic() - start:.1f} s")


if __name__ == "__main__":
    main()
