"""Validation mask AP over training steps, one line per run: has the tail flattened?

    python -m maskrcnn.analysis.val_curves RUN_OR_SWEEP_DIR [...] --out results/gap_shapes_fpn_1500/val_curves.png

Reads each run's metrics.json "validations" (train.py writes every validation's metrics there). Colours are the
variants' (maskrcnn.analysis.variants), line styles the seeds'; dotted verticals mark the LR decays, the shaded
span the validations the report averages. Imports neither torch nor the ops.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from maskrcnn.analysis.gap_runs import ReportError, run_config
from maskrcnn.analysis.variants import rank, style

SEED_STYLES = ("-", "--", "-.", ":", (0, (5, 1)), (0, (3, 1, 1, 1, 1, 1)))


def load_curves(dirs: list[Path]) -> list[dict]:
    """[{"roi", "seed", "steps", "mask_ap" (points), "lr_steps", "tail_steps"}] of every metrics.json below `dirs`
    that records its validations, sorted by variant and seed."""
    curves = []
    for path in sorted({f.resolve() for d in dirs for f in Path(d).rglob("metrics.json")}):
        data = json.loads(path.read_text())
        validations = data.get("validations") or []
        if not validations:
            continue
        cfg, _ = run_config(path.parent)
        curves.append({
            "roi": data["roi"],
            "seed": int(data["seed"]),
            "steps": [v["step"] for v in validations],
            "mask_ap": [100 * v["segm/AP"] for v in validations],
            "lr_steps": list(cfg.get("optim", {}).get("steps", [])),
            "tail_steps": (data.get("tail") or {}).get("steps", []),
        })
    if not curves:
        raise ReportError(f"no metrics.json with validations under {', '.join(map(str, dirs))}")
    return sorted(curves, key=lambda c: (rank(c["roi"]), c["seed"]))


def plot(curves: list[dict], out: Path, title: str = "") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (full, tail) = plt.subplots(1, 2, figsize=(13, 5), dpi=130, gridspec_kw={"width_ratios": [3, 2]})
    tail_steps = sorted({s for c in curves for s in c["tail_steps"]})
    for ax in (full, tail):
        for c in curves:
            s = style(c["roi"])
            ax.plot(c["steps"], c["mask_ap"], color=s.color, ls=SEED_STYLES[c["seed"] % len(SEED_STYLES)],
                    marker=s.marker, ms=4, lw=1.4, label=f"{c['roi']} s{c['seed']}")  # fmt: skip
        for decay in sorted({d for c in curves for d in c["lr_steps"]}):
            ax.axvline(decay, color="gray", ls=":", lw=1)
        if tail_steps:
            ax.axvspan(tail_steps[0] - 15, tail_steps[-1] + 15, color="gold", alpha=0.15, lw=0)
        ax.set_xlabel("training step")
        ax.grid(alpha=0.3)
    full.set_ylabel("val mask AP (points)")
    full.set_title(title or "val mask AP over training (dotted: LR decays; shaded: the report's tail mean)",
                   fontsize=10)
    if tail_steps:
        first = min(s for c in curves for s in c["steps"] if s >= tail_steps[0] - 200)
        tail.set_xlim(first - 30, tail_steps[-1] + 30)
        visible = [ap for c in curves for st, ap in zip(c["steps"], c["mask_ap"], strict=True) if st >= first]
        tail.set_ylim(min(visible) - 1, max(visible) + 1)
        tail.set_title("the tail, zoomed", fontsize=10)
    tail.legend(frameon=False, fontsize=7, ncol=2)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("dirs", nargs="+", type=Path, help="run or sweep directories holding metrics.json files")
    parser.add_argument("--out", type=Path, required=True, help="the PNG to write")
    parser.add_argument("--title", default="")
    args = parser.parse_args(argv)
    try:
        curves = load_curves(args.dirs)
    except ReportError as e:
        parser.exit(2, f"val_curves: error: {e}\n")
    plot(curves, args.out, args.title)
    print(f"wrote {args.out} ({len(curves)} runs)")


if __name__ == "__main__":
    main()
