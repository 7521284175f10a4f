"""The gap report's chart (roi_gap.png) and its TensorBoard copy; `summary` is gap_report.summarize's output."""

from __future__ import annotations

import re
import textwrap
from pathlib import Path

from maskrcnn.analysis.variants import BASELINE, style

BARS = [("segm/AP", "mask AP"), ("segm/AP50", "mask AP50"), ("segm/AP75", "mask AP75"), ("bbox/AP", "box AP")]


def _style(roi: str) -> tuple[str, str]:
    s = style(roi)
    return s.color, s.marker


def _nan(std: float | None) -> float:
    return float("nan") if std is None else std  # no error bar for a single seed


def bar_chart(summary: list[dict], path: Path) -> None:
    """One column per setting. Top: mean ± std over seeds per variant. Bottom: the paired difference of mask AP
    against RoIPool with its 95% interval (a hollow marker where there is no interval: a single pair)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, len(summary), figsize=(6.5 * len(summary), 7.5), dpi=130, squeeze=False,
                             gridspec_kw={"height_ratios": [3, 2]})
    for (top, bottom), setting in zip(axes.T, summary, strict=True):
        rows = setting["rows"]
        width = 0.8 / len(rows)
        for i, row in enumerate(rows):
            xs = [j + (i - (len(rows) - 1) / 2) * width for j in range(len(BARS))]
            top.bar(xs, [row["mean"][k] for k, _ in BARS], width, yerr=[_nan(row["std"][k]) for k, _ in BARS],
                    capsize=2, label=f"{row['roi']} (n={row['n']})", color=_style(row["roi"])[0])
        top.set_xticks(range(len(BARS)), [name for _, name in BARS])
        top.set_ylabel("COCO AP (points), mean ± std over seeds")
        top.set_title("\n".join(textwrap.wrap(setting["setting"], 60)), fontsize=10)
        top.grid(axis="y", alpha=0.3)
        top.legend(frameon=False, fontsize=8)

        for i, row in enumerate(rows):
            paired = (row["paired"] or {}).get("segm/AP")
            if paired is None:
                continue
            color, marker = _style(row["roi"])
            ci = paired["ci"]
            yerr = None if ci is None else [[paired["mean"] - ci[0]], [ci[1] - paired["mean"]]]
            bottom.errorbar([i], [paired["mean"]], yerr=yerr, color=color, marker=marker, capsize=4, ms=7,
                            mfc=color if ci is not None else "none", ls="none")
        bottom.axhline(0, color="black", lw=0.8)
        bottom.set_xlim(-0.5, len(rows) - 0.5)
        bottom.set_xticks(range(len(rows)), [row["roi"] for row in rows], fontsize=8)
        bottom.set_ylabel(f"paired Δ mask AP vs {BASELINE}\n(points, 95% CI)")
        bottom.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


def to_tensorboard(summary: list[dict], chart: Path, log_dir: Path) -> None:
    """Scalars roi_gap/<setting>/<metric>/<roi> (the means) and the chart as an image."""
    import numpy as np
    from PIL import Image
    from torch.utils.tensorboard import SummaryWriter

    with SummaryWriter(str(log_dir)) as writer:
        for setting in summary:
            tag = re.sub(r"[^A-Za-z0-9_.-]+", "_", setting["setting"]).strip("_")
            for row in setting["rows"]:
                for key, name in BARS:
                    writer.add_scalar(f"roi_gap/{tag}/{name.replace(' ', '_')}/{row['roi']}", row["mean"][key])
        with Image.open(chart) as im:
            writer.add_image("roi_gap/chart", np.asarray(im.convert("RGB")), dataformats="HWC")
