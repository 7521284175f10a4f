"""One validation of a checkpoint, this checkout against an older one, interleaved (issue #26's validation bar).

    python -m bench.validation --ckpt outputs/train/<run>/checkpoints/last.ckpt --old /tmp/old [--repeat 3]

`--old` is a checkout of the commit to compare with (e.g. `git worktree add /tmp/old 3f51a29`, with its own
`python -m ops.build`). Every run is a fresh process that imports that checkout's packages (bench.old_vs_new) and
runs its `evaluate(cfg)`, as `python evaluate.py ckpt_path=...` does: the checkpoint's val set, its dataloader,
Lightning's validate loop, COCO results and pycocotools scoring. The runs alternate old, new, old, new, ... so a
slow spell of a shared machine hits both. Per run: the seconds of `trainer.validate` (the validation itself:
inference, RLE encoding and COCO scoring) and of the whole `evaluate` (+ loading the model and the ground truth),
the process CPU seconds, the load average before it, and the 12 metrics. Printed: each run, the medians, their
ratio and the largest metric difference; JSON to --out (default bench/results/validation_cpu.json).
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


def child(ckpt: str, output_dir: str, threads: int | None) -> None:
    """Runs in the checkout being measured: prints one JSON line with the timings and metrics."""
    import pytorch_lightning as pl
    import torch

    import maskrcnn
    from maskrcnn.config import compose_config
    from maskrcnn.evaluate_checkpoint import evaluate

    if threads:
        torch.set_num_threads(threads)
    seconds: dict[str, float] = {}
    validate = pl.Trainer.validate

    def timed_validate(self, *args, **kwargs):
        start, cpu = time.perf_counter(), time.process_time()
        result = validate(self, *args, **kwargs)
        seconds["validate"], seconds["validate_cpu"] = time.perf_counter() - start, time.process_time() - cpu
        return result

    pl.Trainer.validate = timed_validate
    cfg = compose_config("evaluate", [f"ckpt_path={ckpt}", f"paths.output_dir={output_dir}"])
    start = time.perf_counter()
    metrics = evaluate(cfg)
    seconds["evaluate"] = time.perf_counter() - start
    record = {
        "seconds": seconds,
        "metrics": {k: v for k, v in metrics.items() if k.startswith(("bbox/", "segm/"))},
        "package": str(Path(maskrcnn.__file__).parent),
        "threads": torch.get_num_threads(),
    }
    print("RESULT " + json.dumps(record))


def run(checkout: Path, ckpt: str, threads: int | None) -> dict:
    """One validation in a fresh process of `checkout`."""
    from bench.old_vs_new import run_child

    with tempfile.TemporaryDirectory() as out:
        threads_args = ["--threads", str(threads)] if threads else []
        return run_child(__file__, checkout, [ckpt, "--output-dir", out, *threads_args])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ckpt", help="the checkpoint both checkouts validate")
    parser.add_argument("--old", type=Path, help="a checkout of the commit to compare with")
    parser.add_argument("--repeat", type=int, default=3, help="validations per checkout")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's default)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "validation_cpu.json")
    parser.add_argument("--child", metavar="CKPT", help=argparse.SUPPRESS)
    parser.add_argument("--output-dir", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.output_dir, args.threads)
        return
    if not args.ckpt or not args.old:
        parser.error("--ckpt and --old are required")

    from bench.old_vs_new import commit_of
    from bench.report import write_json
    from maskrcnn.runinfo import device_description

    sides = {"old": args.old.resolve(), "new": ROOT}
    runs: dict[str, list[dict]] = {name: [] for name in sides}
    for i in range(args.repeat):
        for name, checkout in sides.items():
            result = run(checkout, str(Path(args.ckpt).resolve()), args.threads)
            runs[name].append(result)
            s = result["seconds"]
            print(f"[{i + 1}/{args.repeat}] {name}: validate {s['validate']:.1f} s (cpu {s['validate_cpu']:.1f} s), "
                  f"evaluate {s['evaluate']:.1f} s, load before {result['load_before']:.1f}, "
                  f"segm/AP {result['metrics']['segm/AP']:.4f}", flush=True)  # fmt: skip

    median = {name: statistics.median(r["seconds"]["validate"] for r in rs) for name, rs in runs.items()}
    metrics = {name: rs[0]["metrics"] for name, rs in runs.items()}
    difference = max(abs(metrics["new"][k] - metrics["old"][k]) for k in metrics["old"])
    ratio = median["old"] / median["new"]
    print(f"validate median: old {median['old']:.1f} s, new {median['new']:.1f} s: {ratio:.2f}x faster; "
          f"largest metric difference {difference:.2e}")  # fmt: skip
    write_json(
        args.out,
        {
            "ckpt": str(Path(args.ckpt).resolve()),
            "machine": device_description(),
            "old_commit": commit_of(sides["old"]),
            "new_commit": commit_of(ROOT),
            "repeat": args.repeat,
            "validate_seconds_median": median,
            "speedup": round(ratio, 2),
            "max_metric_difference": difference,
            "metrics": metrics,
            "runs": runs,
        },
    )


if __name__ == "__main__":
    main()
