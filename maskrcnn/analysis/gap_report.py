"""The RoI-gap report: one paper-style table (Mask R-CNN Table 2c/2d) from the runs of one or more sweeps.

    python -m maskrcnn.analysis.gap_report SWEEP_OR_RUN_DIR [...] --out DIR [--tensorboard LOG_DIR]

Every metrics.json below the given directories is one run (train.py). Runs are grouped by setting (model +
data + schedule, gap_runs.Setting) and RoI variant. Per row, in COCO AP points (x100): mask AP, AP50, AP75
and box AP as mean ± std over seeds; the number of seeds; Δ mask AP against RoIPool (difference of the
means); the paired difference against RoIPool over the seeds both have, with its 95% t interval; the
variant/RoIPool ratios of mask AP50 and AP75. Beside each number, in parentheses, the paper's (paper_table2).

Writes to --out: roi_gap.md (the table), roi_gap.json (one record per run: setting, roi, seed, metrics,
train_minutes, device; DESIGN.md's contract), roi_gap_summary.json (the table's numbers) and roi_gap.png;
with --tensorboard, the means and the chart to that log dir too.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path

from maskrcnn.analysis.gap_chart import bar_chart, to_tensorboard
from maskrcnn.analysis.gap_runs import METRICS, ReportError, load_runs
from maskrcnn.analysis.gap_stats import mean_std, paired_difference
from maskrcnn.analysis.paper_table2 import TABLES, TEXT_GAINS
from maskrcnn.analysis.variants import BASELINE, STYLES, rank, style

COLUMNS = [("segm/AP", "mask AP"), ("segm/AP50", "AP50"), ("segm/AP75", "AP75"), ("bbox/AP", "box AP")]
RATIOS = ("segm/AP50", "segm/AP75")  # RoIAlign's gain is a localisation gain: it grows from AP50 to AP75
PAPER = "He et al., Mask R-CNN, arXiv 1703.06870 v3, ResNet-50 on COCO minival"


def summarize(runs: list[dict]) -> list[dict]:
    """[{"setting", "arch", "rows": [row, ...]}] in the runs' setting order, rows in analysis.variants order.

    A row: roi, n, seeds, mean and std {metric: AP points}, and against the baseline (RoIPool) of its setting:
    delta {column: difference of means}, paired {column: gap_stats.paired_difference}, ratio {AP50, AP75};
    paper, paper_delta, paper_ratio and paper_source where the paper has the cell. None where not defined.
    """
    grouped: dict[str, dict[str, list[dict]]] = defaultdict(lambda: defaultdict(list))
    arch = {}
    for run in runs:
        grouped[run["setting"]][run["roi"]].append(run)
        arch[run["setting"]] = run["arch"]
    summary = []
    for setting, by_roi in grouped.items():
        rows = {roi: _row(roi, group) for roi, group in sorted(by_roi.items(), key=lambda kv: rank(kv[0]))}
        base = rows.get(BASELINE)
        for row in rows.values():
            _compare(row, base, by_roi)
            _add_paper(row, arch[setting])
        summary.append({"setting": setting, "arch": arch[setting], "rows": list(rows.values())})
    return summary


def _row(roi: str, group: list[dict]) -> dict:
    row: dict = {"roi": roi, "n": len(group), "seeds": sorted(r["seed"] for r in group), "mean": {}, "std": {}}
    for key in METRICS:
        row["mean"][key], row["std"][key] = mean_std([100 * r["metrics"][key] for r in group])
    row["final_mask_ap"] = mean_std([100 * r.get("final_metrics", r["metrics"])["segm/AP"] for r in group])
    verdicts = [r["convergence"]["met"] for r in group if r.get("convergence")]
    row["converged"] = [sum(verdicts), len(verdicts)] if verdicts else None
    return row


def _compare(row: dict, base: dict | None, by_roi: dict[str, list[dict]]) -> None:
    row["delta"] = row["paired"] = row["ratio"] = None
    if base is None or row is base:
        return
    row["delta"] = {k: row["mean"][k] - base["mean"][k] for k, _ in COLUMNS}
    by_seed = {roi: {r["seed"]: r["metrics"] for r in by_roi[roi]} for roi in (row["roi"], BASELINE)}
    row["paired"] = {
        k: paired_difference({s: 100 * m[k] for s, m in by_seed[row["roi"]].items()},
                             {s: 100 * m[k] for s, m in by_seed[BASELINE].items()})
        for k, _ in COLUMNS
    }
    row["ratio"] = {k: row["mean"][k] / base["mean"][k] if base["mean"][k] > 0 else None for k in RATIOS}


def _add_paper(row: dict, arch: str) -> None:
    row["paper"] = row["paper_delta"] = row["paper_ratio"] = row["paper_source"] = None
    paper_row, base_row = style(row["roi"]).paper_row, STYLES[BASELINE].paper_row
    if paper_row is None:
        return
    if arch in TABLES:
        table, cells = TABLES[arch]
        if paper_row not in cells:
            return
        row["paper"], base = cells[paper_row], cells[base_row]
        row["paper_source"] = f"{table}, {paper_row}"
        if row["roi"] != BASELINE:
            row["paper_delta"] = {k: row["paper"][k] - base[k] for k in row["paper"] if k in base}
            row["paper_ratio"] = {k: row["paper"][k] / base[k] for k in RATIOS}
    elif arch in TEXT_GAINS and paper_row in TEXT_GAINS[arch][1]:
        source, gains = TEXT_GAINS[arch]
        row["paper_delta"], row["paper_source"] = gains[paper_row], f"{source}: {paper_row} − {base_row}"


def markdown(summary: list[dict], command: str, runs: list[dict] | None = None) -> str:
    n_runs = sum(row["n"] for s in summary for row in s["rows"])
    tails = any("mean of the last" in s["setting"] for s in summary)
    judged = any(row["converged"] for s in summary for row in s["rows"])
    extra = (["final mask AP"] if tails else []) + (["converged"] if judged else [])
    lines = [
        "# The RoI feature extractor gap (Mask R-CNN Table 2c/2d)",
        "",
        f"{n_runs} runs, produced by `{command}`. COCO AP points (x100). Cells: mean ± std over seeds (one seed: "
        f"the value alone), and in parentheses the paper's number for the same cell ({PAPER}: Table 2c for C4, "
        "2d for C5; with FPN only its text's approximate gain over RoIPool). Our data and schedules are not the "
        f"paper's: compare signs and shapes, not sizes. Δ: difference of the means against `{BASELINE}`. "
        f"Paired Δ: mean over the seeds run with both of (variant − {BASELINE}), with the 95% t interval of "
        f"those paired differences (n/a below 2 pairs). ÷ {BASELINE}: the variant's mean over "
        f"{style(BASELINE).label}'s."
        + (" Where a setting says 'mean of the last N validations', every number of its runs is that mean; "
           "final mask AP is the last validation's." if tails else "")
        + (" converged: the runs that meet their setting's convergence rule (from training signals alone; see "
           "its config), of those judged; a run that fails it is reported, not dropped." if judged else ""),
        "",
        "| setting | RoI op | " + " | ".join(name for _, name in COLUMNS)
        + " | seeds | Δ mask AP | paired Δ mask AP [95% CI] | paired Δ box AP [95% CI] | "
        + " | ".join(f"{name} ÷ {BASELINE}" for name in ("AP50", "AP75"))
        + "".join(f" | {name}" for name in extra) + " |",
        "|---|---|" + "---:|" * (len(COLUMNS) + 6 + len(extra)),
    ]
    unaligned = []
    for s in summary:
        for i, row in enumerate(s["rows"]):
            mark = style(row["roi"]).unaligned
            if mark and row["roi"] not in unaligned:
                unaligned.append(row["roi"])
            paper = row["paper"] or {}
            cells = [_mean_cell(row, k) + _paren(paper.get(k), "{:.1f}") for k, _ in COLUMNS]
            delta = "—" if row["delta"] is None else f"{row['delta']['segm/AP']:+.1f}"
            if row["paper_delta"] and "segm/AP" in row["paper_delta"]:
                approx = "≈" if row["paper"] is None else ""
                delta += f" ({approx}{row['paper_delta']['segm/AP']:+.1f})"
            ratios = ["—" if row["ratio"] is None else _ratio_cell(row, k) for k in RATIOS]
            if tails:
                mean, std = row["final_mask_ap"]
                ratios.append(f"{mean:.1f}" if std is None else f"{mean:.1f} ± {std:.1f}")
            if judged:
                ratios.append("—" if row["converged"] is None else f"{row['converged'][0]}/{row['converged'][1]}")
            lines.append(
                f"| {s['setting'] if i == 0 else ''} | {row['roi']}{'†' if mark else ''} | {' | '.join(cells)} "
                f"| {row['n']} | {delta} | {_paired_cell(row, 'segm/AP')} | {_paired_cell(row, 'bbox/AP')} "
                f"| {' | '.join(ratios)} |"
            )
    if unaligned:
        lines += ["", _legacy_footnote(unaligned)]
    if runs is not None:
        lines += ["", commits_line(runs)]
    return "\n".join(lines) + "\n"


def commits_line(runs: list[dict]) -> str:
    """Which code trained the runs: each recorded commit with its run count (and how many had local changes)."""
    counts: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for run in runs:
        counts[run.get("git_commit") or ""][0] += 1
        counts[run.get("git_commit") or ""][1] += bool(run.get("git_dirty"))
    parts = []
    for commit, (n, dirty) in sorted(counts.items(), key=lambda kv: (kv[0] == "", -kv[1][0])):
        name = f"`{commit[:12]}`" if commit else "not recorded (runs from before commits were recorded)"
        parts.append(f"{name}: {n} run{'s' if n > 1 else ''}" + (f", {dirty} with local changes" if dirty else ""))
    return "Trained by the code at: " + "; ".join(parts) + "."


def _mean_cell(row: dict, key: str) -> str:
    std = row["std"][key]
    return f"{row['mean'][key]:.1f}" if std is None else f"{row['mean'][key]:.1f} ± {std:.1f}"


def _paren(value: float | None, fmt: str) -> str:
    return "" if value is None else f" ({fmt.format(value)})"


def _ratio_cell(row: dict, key: str) -> str:
    ours = row["ratio"][key]
    paper = (row["paper_ratio"] or {}).get(key)
    return ("n/a" if ours is None else f"{ours:.2f}") + _paren(paper, "{:.2f}")


def _paired_cell(row: dict, key: str) -> str:
    if row["paired"] is None:
        return "—"
    p = row["paired"][key]
    if p is None:
        return "no common seed"
    pairs = f"{p['n']} pair{'s' if p['n'] > 1 else ''}"
    if p["ci"] is None:
        return f"{p['mean']:+.1f}, CI n/a ({pairs})"
    return f"{p['mean']:+.1f} [{p['ci'][0]:+.1f}, {p['ci'][1]:+.1f}] ({pairs})"


def _legacy_footnote(legacy: list[str]) -> str:
    aligned = [name for name, s in STYLES.items() if s.paper_row and s.paper_row.startswith("RoIAlign")]
    return (f"† The paper has no row for `{'`, `'.join(legacy)}` (RoIAlign with aligned=False). Our "
            f"`{'`, `'.join(aligned)}` use aligned=True, the half-pixel correction introduced after the paper "
            "(Detectron2, torchvision's `aligned` flag); the paper's RoIAlign predates it, so "
            f"`{'`, `'.join(legacy)}` is arguably the op the paper measured. The paper's RoIAlign numbers are "
            f"shown beside `{'`, `'.join(aligned)}` by name only.")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("dirs", nargs="+", type=Path, help="sweep or run directories holding metrics.json files")
    parser.add_argument("--out", type=Path, required=True,
                        help="output directory (roi_gap.md, roi_gap.json, roi_gap_summary.json, roi_gap.png)")
    parser.add_argument("--tensorboard", type=Path, help="also write the means and the chart to this log dir")
    args = parser.parse_args(argv)
    try:
        runs = load_runs(args.dirs)
    except ReportError as e:
        parser.exit(2, f"gap_report: error: {e}\n")
    summary = summarize(runs)
    args.out.mkdir(parents=True, exist_ok=True)
    command = " ".join(["python -m maskrcnn.analysis.gap_report", *(argv if argv is not None else sys.argv[1:])])
    table = markdown(summary, command, runs)
    (args.out / "roi_gap.md").write_text(table)
    (args.out / "roi_gap.json").write_text(json.dumps(runs, indent=1) + "\n")
    stats = {"units": "COCO AP points (x100)", "baseline": BASELINE, "interval": "95% t, paired by seed",
             "paper": PAPER, "settings": summary}
    (args.out / "roi_gap_summary.json").write_text(json.dumps(stats, indent=1) + "\n")
    bar_chart(summary, args.out / "roi_gap.png")
    if args.tensorboard:
        to_tensorboard(summary, args.out / "roi_gap.png", args.tensorboard)
    print(table)
    print(f"wrote {args.out}/roi_gap.md, roi_gap.json, roi_gap_summary.json, roi_gap.png ({len(runs)} runs)")


if __name__ == "__main__":
    main()
