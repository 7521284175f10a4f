"""The first N steps of the Quick-start job plus one validation, this checkout against an older one (issue #26).

    python -m bench.short_run --old /tmp/old [--steps 300] [--repeat 1] [--experiment demo]

Each run is `train(cfg)` of `experiment=demo trainer.max_steps=N trainer.val_check_interval=N` in a fresh process
of its checkout (bench.old_vs_new), old and new alternating. Timed per run, by wrapping Lightning's classes:
`fit` (the N steps, the sanity check and the validation) and every run of the evaluation loop inside it (the
validation: inference, RLE encoding, COCO scoring). `steps` is fit minus those validations; `train` is the whole
train(cfg), and an evaluation loop run after fit (if that checkout's train() has one) is timed apart.
The built-in data must already be generated (ROI_GAP_DATA_DIR) so neither side times its generation.
Printed: each run and the medians' ratios; JSON to --out (default bench/results/short_run_cpu.json).
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

# The child runs in the other checkout, whose bench/ may predate old_vs_new: only main() imports it.
ROOT = Path(__file__).resolve().parents[1]


def child(steps: int, experiment: str, output_dir: str) -> None:
    """Runs in the checkout being measured: prints one RESULT line with the timings and the final metrics."""
    import pytorch_lightning as pl
    from pytorch_lightning.loops.evaluation_loop import _EvaluationLoop

    from maskrcnn.config import compose_config
    from maskrcnn.training import train

    seconds = {"fit": 0.0, "validation": 0.0, "validation_after_fit": 0.0}
    validations, in_fit = 0, False
    fit, run_loop = pl.Trainer.fit, _EvaluationLoop.run

    def timed_fit(self, *args, **kwargs):
        nonlocal in_fit
        start, in_fit = time.perf_counter(), True
        try:
            return fit(self, *args, **kwargs)
        finally:
            seconds["fit"] += time.perf_counter() - start
            in_fit = False

    def timed_loop(self, *args, **kwargs):
        nonlocal validations
        start = time.perf_counter()
        try:
            return run_loop(self, *args, **kwargs)
        finally:
            seconds["validation" if in_fit else "validation_after_fit"] += time.perf_counter() - start
            validations += in_fit

    pl.Trainer.fit, _EvaluationLoop.run = timed_fit, timed_loop
    overrides = [f"experiment={experiment}", f"trainer.max_steps={steps}", f"trainer.val_check_interval={steps}",
                 f"paths.output_dir={output_dir}"]  # fmt: skip
    cfg = compose_config("train", overrides)
    start = time.perf_counter()
    metrics = train(cfg)
    seconds["train"] = time.perf_counter() - start  # fit + whatever train() does after it
    seconds["steps"] = seconds["fit"] - seconds["validation"]
    record = {"seconds": seconds, "evaluation_loop_runs": validations,
              "metrics": {k: v for k, v in metrics.items() if k.startswith(("bbox/", "segm/"))}}  # fmt: skip
    print("RESULT " + json.dumps(record))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--old", type=Path, help="a checkout of the commit to compare with")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--experiment", default="demo", help="the experiment config to run (default: demo)")
    parser.add_argument("--repeat", type=int, default=1, help="runs per checkout")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "short_run_cpu.json")
    parser.add_argument("--child", type=int, metavar="STEPS", help=argparse.SUPPRESS)
    parser.add_argument("--output-dir", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.experiment, args.output_dir)
        return
    if not args.old:
        parser.error("--old is required")

    from bench.old_vs_new import commit_of, run_child
    from bench.report import write_json
    from maskrcnn.runinfo import device_description

    sides = {"old": args.old.resolve(), "new": ROOT}
    runs: dict[str, list[dict]] = {name: [] for name in sides}
    for i in range(args.repeat):
        for name, checkout in sides.items():
            with tempfile.TemporaryDirectory() as out:
                child_args = [str(args.steps), "--experiment", args.experiment, "--output-dir", out]
                result = run_child(__file__, checkout, child_args)
            runs[name].append(result)
            s = result["seconds"]
            print(f"[{i + 1}/{args.repeat}] {name}: fit {s['fit']:.0f} s = steps {s['steps']:.0f} s + validation "
                  f"{s['validation']:.0f} s ({result['evaluation_loop_runs']} loop runs), load before "
                  f"{result['load_before']:.1f}, segm/AP {result['metrics']['segm/AP']:.4f}", flush=True)  # fmt: skip

    median = {key: {name: statistics.median(r["seconds"][key] for r in rs) for name, rs in runs.items()}
              for key in ("fit", "steps", "validation")}  # fmt: skip
    ratio = {key: round(m["new"] / m["old"], 3) for key, m in median.items()}
    print("new / old: " + ", ".join(f"{key} {m['new']:.0f} / {m['old']:.0f} s = {ratio[key]:.2f}x"
                                    for key, m in median.items()))  # fmt: skip
    write_json(
        args.out,
        {
            "command": f"python -m bench.short_run --old {args.old} --experiment {args.experiment} "
            f"--steps {args.steps} --repeat {args.repeat}",
            "machine": device_description(),
            "old_commit": commit_of(sides["old"]),
            "new_commit": commit_of(ROOT),
            "steps": args.steps,
            "repeat": args.repeat,
            "seconds_median": median,
            "new_over_old": ratio,
            "runs": runs,
        },
    )


if __name__ == "__main__":
    main()
