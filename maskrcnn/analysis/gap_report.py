"""The RoI-gap report: a paper-style table, roi_gap.json and a bar chart from a sweep's metrics.json files.

    python -m maskrcnn.analysis.gap_report multirun/gap_shapes_c5 --out results/gap_shapes_c5 [--tensorboard DIR]

Every `metrics.json` below the given directories is one run (written by `train.py`). Runs are grouped by
setting (model + data) and RoI variant; each cell is mean ± std over seeds, in COCO AP points (x100) like
the Mask R-CNN paper's Table 2, with the difference to RoIPool.
Outputs: table.md, roi_gap.json (one record per run: the contract in DESIGN.md), summary.json (means, stds,
Δ vs RoIPool, align/pool ratios) and roi_gap.png; optionally the same to TensorBoard.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
from collections import defaultdict
from pathlib import Path

from roi_heads.variants import BASELINE, VARIANTS, of_run

METRICS = [f"{kind}/{m}" for kind in ("bbox", "segm") for m in ("AP", "AP50", "AP75", "APs", "APm", "APl")]
REQUIRED = [*METRICS, "roi", "model", "data", "seed"]
COLUMNS = [("segm/AP", "mask AP"), ("segm/AP50", "AP50"), ("segm/AP75", "AP75"), ("bbox/AP", "box AP")]


class ReportError(ValueError):
    """No runs, or a metrics.json that is not a training run's."""


def load_runs(dirs: list[Path]) -> list[dict]:
    """One record per metrics.json: setting, roi, seed, metrics, train_minutes, device, run_dir."""
    # resolve() + set: a run dir given next to its sweep dir counts once.
    files = sorted({f.resolve() for d in dirs for f in Path(d).rglob("metrics.json")})
    if not files:
        raise ReportError(f"no metrics.json found under {', '.join(str(d) for d in dirs)}")
    runs = []
    for path in files:
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise ReportError(f"{path}: not valid JSON ({e})") from e
        missing = [k for k in REQUIRED if k not in data]
        if missing:
            raise ReportError(f"{path}: missing key(s) {', '.join(missing)}; is it a train.py metrics.json?")
        runs.append({
            "setting": f"{data['model']} / {data['data']}",
            "roi": data["roi"],
            "seed": data["seed"],
            "metrics": {k: data[k] for k in METRICS},
            "train_minutes": data.get("train_minutes"),
            "steps": data.get("steps"),
            "device": data.get("device"),
            "run_dir": os.path.relpath(path.parent),
        })
    return runs


def summarize(runs: list[dict]) -> dict[str, dict[str, dict]]:
    """{setting: {roi: {"n", "seeds", metric: {"mean", "std"}}}} in AP points; std is 0 for a single seed."""
    grouped: dict[str, dict[str, list[dict]]] = defaultdict(lambda: defaultdict(list))
    for run in runs:
        grouped[run["setting"]][run["roi"]].append(run)
    summary: dict[str, dict[str, dict]] = {}
    for setting, by_roi in grouped.items():
        summary[setting] = {}
        for roi in sorted(by_roi, key=_variant_rank):
            group = by_roi[roi]
            row: dict = {"n": len(group), "seeds": sorted(r["seed"] for r in group)}
            for key in METRICS:
                values = [100 * r["metrics"][key] for r in group]
                std = statistics.stdev(values) if len(values) > 1 else 0.0
                row[key] = {"mean": statistics.fmean(values), "std": std}
            summary[setting][roi] = row
    return summary


def comparisons(summary: dict[str, dict[str, dict]]) -> dict[str, dict]:
    """{setting: {"delta_vs_pool": {roi: {metric: diff of means}}, "align_over_pool": {AP75, AP50}}}."""
    out: dict[str, dict] = {}
    for setting, rows in summary.items():
        base = rows.get(BASELINE.name)
        entry: dict = {"delta_vs_pool": {}, "align_over_pool": {}}
        if base is not None:
            entry["delta_vs_pool"] = {roi: {k: row[k]["mean"] - base[k]["mean"] for k, _ in COLUMNS}
                                      for roi, row in rows.items()}
            if "align" in rows:
                entry["align_over_pool"] = {k: _ratio_value(rows["align"], base, k)
                                            for k in ("segm/AP75", "segm/AP50")}
        out[setting] = entry
    return out


def _ratio_value(row: dict, base: dict, key: str) -> float | None:
    return row[key]["mean"] / base[key]["mean"] if base[key]["mean"] > 0 else None


def _variant_rank(roi: str) -> tuple[int, str]:
    v = of_run(roi)
    return (VARIANTS.index(v) if v is not None else len(VARIANTS), roi)


def markdown(summary: dict[str, dict[str, dict]]) -> str:
    lines = []
    for setting, rows in summary.items():
        lines += [f"### {setting}", ""]
        header = " | ".join(name for _, name in COLUMNS)
        lines += [f"| RoI op | {header} | seeds | Δ mask AP | Δ AP75 | Δ box AP |", "|---" * (len(COLUMNS) + 5) + "|"]
        base = rows.get(BASELINE.name)
        for roi, row in rows.items():
            # One seed has no spread to show: the mean alone, not a misleading "± 0.0".
            cells = [
                f"{row[k]['mean']:.1f} ± {row[k]['std']:.1f}" if row["n"] > 1 else f"{row[k]['mean']:.1f}"
                for k, _ in COLUMNS
            ]
            deltas = [_delta(row, base, k) for k in ("segm/AP", "segm/AP75", "bbox/AP")]
            lines.append(f"| {roi} | {' | '.join(cells)} | {row['n']} | {' | '.join(deltas)} |")
        if base is not None and "align" in rows:
            ratio75 = _ratio(rows["align"], base, "segm/AP75")
            ratio50 = _ratio(rows["align"], base, "segm/AP50")
            lines += ["", f"align/pool ratio of mask AP75: {ratio75}, of mask AP50: {ratio50} "
                      "(paper, R50-C5 stride 32: 32.1/21.6 = 1.49 and 51.8/46.5 = 1.11)"]
        lines.append("")
    return "\n".join(lines)


def _delta(row: dict, base: dict | None, key: str) -> str:
    if base is None:
        return "n/a"
    if row is base:
        return "—"
    return f"{row[key]['mean'] - base[key]['mean']:+.1f}"


def _ratio(row: dict, base: dict, key: str) -> str:
    value = _ratio_value(row, base, key)
    return "inf" if value is None else f"{value:.2f}"


def bar_chart(summary: dict[str, dict[str, dict]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    settings = list(summary)
    fig, axes = plt.subplots(1, len(settings), figsize=(6.5 * len(settings), 4.2), dpi=130, squeeze=False)
    for ax, setting in zip(axes[0], settings, strict=True):
        rois = list(summary[setting])
        width = 0.8 / len(rois)
        for i, roi in enumerate(rois):
            row = summary[setting][roi]
            xs = [j + (i - (len(rois) - 1) / 2) * width for j in range(len(COLUMNS))]
            ax.bar(xs, [row[k]["mean"] for k, _ in COLUMNS], width, yerr=[row[k]["std"] for k, _ in COLUMNS],
                   capsize=2, label=f"{roi} (n={row['n']})", color=v.color if (v := of_run(roi)) else "gray")
        ax.set_xticks(range(len(COLUMNS)), [k.replace("segm/", "mask ").replace("bbox/", "box ") for k, _ in COLUMNS])
        ax.set_ylabel("COCO AP (points), mean ± std over seeds")
        ax.set_title(setting)
        ax.grid(axis="y", alpha=0.3)
        ax.legend(frameon=False, fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


def to_tensorboard(summary: dict[str, dict[str, dict]], chart: Path, log_dir: Path) -> None:
    import numpy as np
    from PIL import Image
    from torch.utils.tensorboard import SummaryWriter

    with SummaryWriter(str(log_dir)) as writer:
        for setting, rows in summary.items():
            for roi, row in rows.items():
                for key, name in COLUMNS:
                    tag = f"roi_gap/{setting.replace(' / ', '+')}/{name.replace(' ', '_')}/{roi}"
                    writer.add_scalar(tag, row[key]["mean"])
        with Image.open(chart) as im:
            writer.add_image("roi_gap/bar_chart", np.asarray(im.convert("RGB")), dataformats="HWC")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("dirs", nargs="+", type=Path, help="sweep or run directories holding metrics.json files")
    parser.add_argument("--out", type=Path, required=True,
                        help="output directory (table.md, roi_gap.json, summary.json, roi_gap.png)")
    parser.add_argument("--tensorboard", type=Path, help="also write the figures to this TensorBoard log dir")
    args = parser.parse_args(argv)
    try:
        runs = load_runs(args.dirs)
    except ReportError as e:
        parser.exit(2, f"gap_report: error: {e}\n")
    summary = summarize(runs)
    args.out.mkdir(parents=True, exist_ok=True)
    table = markdown(summary)
    (args.out / "table.md").write_text(table)
    (args.out / "roi_gap.json").write_text(json.dumps(runs, indent=1) + "\n")
    stats = {"summary": summary, "comparisons": comparisons(summary), "units": "COCO AP points (x100)"}
    (args.out / "summary.json").write_text(json.dumps(stats, indent=1) + "\n")
    bar_chart(summary, args.out / "roi_gap.png")
    if args.tensorboard:
        to_tensorboard(summary, args.out / "roi_gap.png", args.tensorboard)
    print(table)
    print(f"wrote {args.out}/table.md, roi_gap.json, summary.json, roi_gap.png ({len(runs)} runs)")


if __name__ == "__main__":
    main()
