"""One JSON of the user's main job as bench/gpu_session.sh runs it: train (its metrics, validations and step
times), then evaluate.py and predict on its checkpoint.

    python -m bench.demo_summary DEMO_DIR --out demo.json

DEMO_DIR holds train/ (a train.py run dir), evaluate/ (an evaluate.py run dir) and predict/ (a predict output).
Step times are the intervals between consecutive train/loss events in the run's TensorBoard logs (wall time as
the logger stamped it), so they include data loading and exclude nothing but the validations, which fall
between steps and are left out as outliers by the median and the percentiles.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from maskrcnn.runinfo import device_description


def step_times(tensorboard_dir: Path) -> dict[str, float | int]:
    """{"steps", "median_s", "p10_s", "p90_s", "first_100_median_s", "last_100_median_s"} of the train/loss
    event intervals."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tensorboard_dir), size_guidance={"scalars": 0}).Reload().Scalars("train/loss")
    walls = [e.wall_time for e in sorted(events, key=lambda e: e.step)]
    gaps = [b - a for a, b in zip(walls, walls[1:], strict=False)]
    if not gaps:
        return {"steps": len(walls)}
    deciles = statistics.quantiles(gaps, n=10) if len(gaps) > 1 else [gaps[0]] * 9
    return {
        "steps": len(walls),
        "median_s": statistics.median(gaps),
        "p10_s": deciles[0],
        "p90_s": deciles[-1],
        "first_100_median_s": statistics.median(gaps[:100]),
        "last_100_median_s": statistics.median(gaps[-100:]),
    }


def summarize(demo: Path) -> dict:
    train = json.loads((demo / "train" / "metrics.json").read_text())
    evaluate = json.loads((demo / "evaluate" / "metrics.json").read_text())
    predict = json.loads((demo / "predict" / "summary.json").read_text())
    return {
        "device": device_description(),
        "train": {k: v for k, v in train.items() if k not in ("validations",)},
        "validations": train.get("validations", []),
        "step_times": step_times(demo / "train" / "tensorboard"),
        "evaluate": {k: evaluate[k] for k in evaluate if k.startswith(("bbox/", "segm/"))},
        "predict": predict,
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("demo", type=Path, help="the folder holding train/, evaluate/ and predict/")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    summary = summarize(args.demo)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(summary, indent=1) + "\n")
    times, train = summary["step_times"], summary["train"]
    print(f"demo train: {train['steps']} steps in {train['train_minutes']} min, step median "
          f"{times.get('median_s', float('nan')):.3f} s (p10 {times.get('p10_s', float('nan')):.3f}, p90 "
          f"{times.get('p90_s', float('nan')):.3f}), segm AP {train['segm/AP']:.4f}, bbox AP {train['bbox/AP']:.4f}")
    print(f"demo evaluate: segm AP {summary['evaluate']['segm/AP']:.4f}, bbox AP {summary['evaluate']['bbox/AP']:.4f}")
    scalars = {k: v for k, v in summary["predict"].items() if not isinstance(v, (list, dict))}
    print(f"demo predict: {json.dumps(scalars)}")
    return summary


if __name__ == "__main__":
    main()
