"""Draw where RoIPool, RoIWarp and RoIAlign look on the feature grid for one RoI (three panels, one PNG).

Everything is drawn in continuous image pixels: feature cell ``(h, w)`` at stride ``s`` covers
``[w*s, (w+1)*s) x [h*s, (h+1)*s)`` and its value sits at the cell centre ``((w+0.5)*s, (h+0.5)*s)``; this is
the convention under which RoIAlign(aligned=True) is exact (see maskrcnn/analysis/misalignment_probe.py).

* pool:  corners rounded to cells (C round), size ``x2q - x1q + 1`` cells; bin ``j`` spans cells
  ``[floor(j*w/p), ceil((j+1)*w/p))`` -- unequal and overlapping; its output is the max over those cells.
* warp:  the same quantized box, split into equal bins, bilinear samples on a regular grid in each bin.
* align: the RoI as given (minus half a cell if not aligned), equal bins, bilinear samples.

    python -m maskrcnn.analysis.sampling_figure --box 37 21 190 133 --stride 32 --output-size 7 \\
        --sampling-ratio 2 --out results/figures/roi_grid_s32.png
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.axes import Axes  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.patches import Patch, Rectangle  # noqa: E402

from maskrcnn.analysis.variants import style  # noqa: E402
from ops.reference import quantize_roi  # noqa: E402

Box = tuple[float, float, float, float]  # x1, y1, x2, y2 in image px
ROI_COLOR, GRID_COLOR = "#222222", "#b0b0b0"


@dataclass
class PoolGeometry:
    box: Box  # quantized box in image px
    x_bins: list[tuple[int, int]]  # per output column: [start, end) feature cells
    y_bins: list[tuple[int, int]]  # per output row


def pool_geometry(roi: Box, stride: int, output_size: int) -> PoolGeometry:
    """RoIPool's quantized box and its floor/ceil bins (cells clipped at 0, the map's top-left edge)."""
    x1q, y1q, w, h = quantize_roi(*roi, 1.0 / stride)

    def bins(start: int, size: int) -> list[tuple[int, int]]:
        return [(max(math.floor(j * size / output_size) + start, 0),
                 max(math.ceil((j + 1) * size / output_size) + start, 0)) for j in range(output_size)]

    box = (x1q * stride, y1q * stride, (x1q + w) * stride, (y1q + h) * stride)
    return PoolGeometry(box, bins(x1q, w), bins(y1q, h))


def warp_box(roi: Box, stride: int) -> Box:
    """RoIWarp's box in image px: RoIPool's quantization; RoIAlign(aligned=True) then samples exactly it."""
    return pool_geometry(roi, stride, 1).box


def align_box(roi: Box, stride: int, aligned: bool = True) -> Box:
    """The box RoIAlign samples, in image px: the RoI itself if aligned, else shifted by +stride/2 (feature
    coordinate c/s read as a cell centre) with its size clamped to >= one cell."""
    if aligned:
        return roi
    shift = stride / 2
    w, h = max(roi[2] - roi[0], stride), max(roi[3] - roi[1], stride)
    return roi[0] + shift, roi[1] + shift, roi[0] + shift + w, roi[1] + shift + h


def sample_points(box: Box, stride: int, output_size: int, sampling_ratio: int) -> list[list[tuple[float, float]]]:
    """Bilinear sample positions (image px) for a box sampled with equal bins: [ph*pw][grid_h*grid_w] of (x, y),
    bins in raster order; grid = sampling_ratio, or ceil(box size in cells / output_size) if <= 0."""
    bw, bh = (box[2] - box[0]) / output_size, (box[3] - box[1]) / output_size

    def grid(size_px: float) -> int:
        return sampling_ratio if sampling_ratio > 0 else max(math.ceil(size_px / stride / output_size), 1)

    gx, gy = grid(box[2] - box[0]), grid(box[3] - box[1])
    return [[(box[0] + (q + (ix + 0.5) / gx) * bw, box[1] + (p + (iy + 0.5) / gy) * bh)
             for iy in range(gy) for ix in range(gx)]
            for p in range(output_size) for q in range(output_size)]


def _draw_grid(ax: Axes, stride: int, view: Box) -> None:
    x0, y0, x1, y1 = view
    for x in range(int(x0), int(x1) + 1, stride):
        ax.axvline(x, color=GRID_COLOR, lw=0.6, zorder=0)
    for y in range(int(y0), int(y1) + 1, stride):
        ax.axhline(y, color=GRID_COLOR, lw=0.6, zorder=0)
    cx = [x + stride / 2 for x in range(int(x0), int(x1), stride)]
    cy = [y + stride / 2 for y in range(int(y0), int(y1), stride)]
    ax.scatter([x for x in cx for _ in cy], [y for _ in cx for y in cy], s=6, color=GRID_COLOR, zorder=1)


def _box(ax: Axes, box: Box, **kw) -> None:
    ax.add_patch(Rectangle((box[0], box[1]), box[2] - box[0], box[3] - box[1], **kw))


def _equal_bins(ax: Axes, box: Box, output_size: int, color: str) -> None:
    for j in range(1, output_size):
        x = box[0] + j * (box[2] - box[0]) / output_size
        y = box[1] + j * (box[3] - box[1]) / output_size
        ax.plot([x, x], [box[1], box[3]], color=color, lw=0.7, alpha=0.6, zorder=2)
        ax.plot([box[0], box[2]], [y, y], color=color, lw=0.7, alpha=0.6, zorder=2)


def _samples(ax: Axes, points: list[list[tuple[float, float]]], stride: int, color: str) -> None:
    flat = [pt for bin_pts in points for pt in bin_pts]
    ax.scatter([p[0] for p in flat], [p[1] for p in flat], s=9, color=color, zorder=4, edgecolors="none")
    # One sample's four bilinear neighbours (cell centres), to show what "bilinear" reads.
    x, y = points[len(points) // 2][0]
    lx, ly = math.floor(x / stride - 0.5), math.floor(y / stride - 0.5)
    for nx in (lx, lx + 1):
        for ny in (ly, ly + 1):
            cx, cy = (nx + 0.5) * stride, (ny + 0.5) * stride
            ax.plot([x, cx], [y, cy], color=color, lw=0.8, ls=":", zorder=3)
            ax.scatter([cx], [cy], s=22, facecolors="none", edgecolors=color, lw=0.9, zorder=3)


def _shift_note(ax: Axes, roi: Box, box: Box) -> None:
    d = [b - r for b, r in zip(box, roi, strict=True)]
    ax.text(0.02, 0.98, "box − RoI (px): x1 {:+.0f}, y1 {:+.0f}, x2 {:+.0f}, y2 {:+.0f}".format(*d),
            transform=ax.transAxes, fontsize=8, va="top", ha="left",
            bbox={"facecolor": "white", "alpha": 0.85, "edgecolor": "none", "pad": 2})


def _tracks(spans: list[tuple[int, int]]) -> list[int]:
    """Greedy lane per span so spans in one lane never overlap (floor/ceil bins share cells)."""
    ends: list[int] = []
    lanes = []
    for a, b in spans:
        lane = next((i for i, e in enumerate(ends) if e <= a), len(ends))
        if lane == len(ends):
            ends.append(b)
        ends[lane] = b
        lanes.append(lane)
    return lanes


def _pool_bars(ax: Axes, geo: PoolGeometry, stride: int, color: str) -> None:
    """Each bin's cell span as a bar below (columns) and right of (rows) the quantized box, on as many lanes
    as needed so that bins sharing a cell visibly overlap instead of merging."""
    for spans, horizontal in ((geo.x_bins, True), (geo.y_bins, False)):
        lanes = _tracks(spans)
        pitch = min(0.85 * stride / (max(lanes) + 1), 0.4 * stride)  # all lanes fit in the cell beyond the box
        thick = 0.8 * pitch
        edge = geo.box[3] if horizontal else geo.box[2]
        for j, ((a, b), lane) in enumerate(zip(spans, lanes, strict=True)):
            off = edge + stride * 0.1 + lane * pitch
            lo, length = a * stride + 1, (b - a) * stride - 2
            xy, w, h = ((lo, off), length, thick) if horizontal else ((off, lo), thick, length)
            ax.add_patch(Rectangle(xy, w, h, color=color, alpha=0.4 + 0.35 * (j % 2), lw=0, zorder=2))
            mid = (a + b) / 2 * stride
            tx, ty = (mid, off + thick / 2) if horizontal else (off + thick / 2, mid)
            ax.text(tx, ty, str(j), fontsize=6.5, ha="center", va="center", zorder=3)
    # Highlight one bin (middle row/column) and the cells its max is taken over.
    (xa, xb), (ya, yb) = geo.x_bins[len(geo.x_bins) // 2], geo.y_bins[len(geo.y_bins) // 2]
    _box(ax, (xa * stride, ya * stride, xb * stride, yb * stride), facecolor=color, alpha=0.25, lw=0, zorder=2)
    cells = [((i + 0.5) * stride, (k + 0.5) * stride) for i in range(xa, xb) for k in range(ya, yb)]
    ax.scatter([c[0] for c in cells], [c[1] for c in cells], s=16, color=color, zorder=4)


def panel_variants(aligned: bool) -> dict[str, str]:
    """{op kind: the variant whose colour its panel takes}; a panel draws the same for the avg and max forms."""
    return {"pool": "pool", "warp": "warp", "align": "align" if aligned else "align_legacy"}


def draw(roi: Box, stride: int, output_size: int, sampling_ratio: int, out: Path, aligned: bool = True) -> Path:
    """Writes the 3-panel PNG to `out` and returns it."""
    geo = pool_geometry(roi, stride, output_size)
    wbox, abox = warp_box(roi, stride), align_box(roi, stride, aligned)
    lo_x = min(roi[0], geo.box[0], abox[0])
    lo_y = min(roi[1], geo.box[1], abox[1])
    hi_x = max(roi[2], geo.box[2], abox[2])
    hi_y = max(roi[3], geo.box[3], abox[3])
    view = (max(math.floor(lo_x / stride) - 1, 0) * stride, max(math.floor(lo_y / stride) - 1, 0) * stride,
            (math.ceil(hi_x / stride) + 1) * stride, (math.ceil(hi_y / stride) + 1) * stride)

    colors = {kind: style(name).color for kind, name in panel_variants(aligned).items()}
    fig, axes = plt.subplots(1, 3, figsize=(16, 6.2), dpi=140, sharex=True, sharey=True)
    titles = {
        "pool": "RoIPool: rounded box, unequal floor/ceil bins,\nmax over whole cells",
        "warp": "RoIWarp: rounded box, equal bins,\nbilinear samples",
        "align": f"RoIAlign{'' if aligned else ' (aligned=False)'}: exact box, equal bins,\nbilinear samples",
    }
    for ax, kind in zip(axes, ("pool", "warp", "align"), strict=True):
        _draw_grid(ax, stride, view)
        _box(ax, roi, fill=False, ec=ROI_COLOR, lw=1.6, ls="--", zorder=5)
        color = colors[kind]
        if kind == "pool":
            _box(ax, geo.box, facecolor=color, alpha=0.06, ec=color, lw=2, zorder=2)
            _box(ax, geo.box, fill=False, ec=color, lw=2, zorder=4)
            _pool_bars(ax, geo, stride, color)
            _shift_note(ax, roi, geo.box)
        else:
            box = wbox if kind == "warp" else abox
            _box(ax, box, facecolor=color, alpha=0.06, lw=0, zorder=2)
            _box(ax, box, fill=False, ec=color, lw=2, zorder=4)
            _equal_bins(ax, box, output_size, color)
            _samples(ax, sample_points(box, stride, output_size, sampling_ratio), stride, color)
            _shift_note(ax, roi, box)
        ax.set_title(titles[kind], fontsize=11, color=color)
        ax.set_xlim(view[0], view[2])
        ax.set_ylim(view[3], view[1])  # image y points down
        ax.set_aspect("equal")
        ax.set_xlabel("x (image px)")
    axes[0].set_ylabel("y (image px)")

    handles = [
        Line2D([], [], color=ROI_COLOR, ls="--", lw=1.6, label="RoI as given"),
        Line2D([], [], color=GRID_COLOR, marker="o", ms=3, lw=0.6, label=f"feature cells ({stride} px) + centres"),
        Patch(facecolor="none", edgecolor=colors["pool"], lw=2, label="RoIPool quantized box"),
        Patch(facecolor=colors["pool"], alpha=0.5, label="RoIPool bin spans (cells) / one bin's max cells"),
        Patch(facecolor="none", edgecolor=colors["warp"], lw=2, label="RoIWarp quantized box + bins"),
        Patch(facecolor="none", edgecolor=colors["align"], lw=2, label="RoIAlign box + bins"),
        Line2D([], [], color="#555555", marker="o", ls="none", ms=4, label="bilinear sample points"),
        Line2D([], [], color="#555555", marker="o", mfc="none", ls=":", ms=5, label="one sample's 4 neighbours"),
    ]
    fig.legend(handles=handles, loc="lower center", ncol=4, frameon=False, fontsize=9)
    sr = sampling_ratio if sampling_ratio > 0 else "adaptive"
    fig.suptitle(f"RoI ({roi[0]:g}, {roi[1]:g}, {roi[2]:g}, {roi[3]:g}) px  ·  stride {stride}  ·  "
                 f"{output_size}×{output_size} bins  ·  sampling ratio {sr}", fontsize=13)
    fig.tight_layout(rect=(0, 0.08, 1, 0.97))
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    plt.close(fig)
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--box", type=float, nargs=4, metavar=("X1", "Y1", "X2", "Y2"), default=[37, 21, 190, 133],
                        help="RoI in image px")
    parser.add_argument("--stride", type=int, default=32)
    parser.add_argument("--output-size", type=int, default=7)
    parser.add_argument("--sampling-ratio", type=int, default=2, help="<= 0 for adaptive")
    parser.add_argument("--legacy-align", action="store_true", help="draw RoIAlign with aligned=False")
    parser.add_argument("--out", type=Path, default=Path("results/figures/roi_grid_s32.png"))
    args = parser.parse_args(argv)
    path = draw(tuple(args.box), args.stride, args.output_size, args.sampling_ratio, args.out,
                aligned=not args.legacy_align)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
