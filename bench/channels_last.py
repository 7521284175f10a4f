"""The demo detector's training step and inference in NCHW against NHWC (train.channels_last), side by side.

    python -m bench.channels_last --ckpt RUN/checkpoints/last.ckpt [--steps 16] [--warmup 2]

Two copies of the demo detector (bench.train_step's demo setup: r18_fpn, 256 px shapes, batch 4, roi=align, fp32)
with the same weights (--ckpt: a trained run's, so the mask branch has its trained share of positive RoIs), one
converted with `.to(memory_format=torch.channels_last)`, each with its own train loader on the same seed, so both
see the same batches. Their steps alternate (so a slow spell of a shared machine hits both): a training step
(forward, backward, SGD), then an inference forward in eval mode on that step's images. Printed: the medians and
their ratio, NHWC over NCHW; the losses of the first batch side by side. JSON to --out.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import os
import statistics
import time
from pathlib import Path

import torch

from bench.report import write_json
from bench.step_setup import detectors_and_feeds
from bench.train_step import to_device, train_step
from maskrcnn.runinfo import device_description

LAYOUTS = {"nchw": torch.contiguous_format, "nhwc": torch.channels_last}


def inference(model: torch.nn.Module, images: list[torch.Tensor]) -> float:
    """Seconds for one eval-mode forward of `images` (the model is back in train mode after it)."""
    model.eval()
    start = time.perf_counter()
    with torch.no_grad():
        model(images)
    seconds = time.perf_counter() - start
    model.train()
    return seconds


def measure(ckpt: Path | None, steps: int, warmup: int) -> dict:
    device = torch.device("cpu")
    no_autocast = torch.autocast("cpu", enabled=False)
    with contextlib.ExitStack() as stack:
        # Two "implementations" of the same detector: only their loaders are used from the second.
        built, checkpoint = detectors_and_feeds("demo", ["ours", "torchvision"], 4, (256, 256), [], ckpt, device, stack)
        base, feeds = built["ours"][0], {"nchw": built["ours"][1], "nhwc": built["torchvision"][1]}
        models = {name: copy.deepcopy(base).to(memory_format=fmt).train() for name, fmt in LAYOUTS.items()}
        optimizers = {
            name: torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9, weight_decay=1e-4)
            for name, model in models.items()
        }
        first_losses = {}
        for name, model in models.items():
            images, targets = to_device(*feeds[name](), device)
            torch.manual_seed(0)
            with torch.no_grad():
                first_losses[name] = {k: float(v) for k, v in model(images, targets).items()}
        times = {name: {"step": [], "inference": []} for name in models}
        for i in range(warmup + steps):
            for name, model in models.items():
                batch = []

                def feed(name=name, batch=batch):
                    batch.extend(feeds[name]())
                    return batch[0], batch[1]

                start = time.perf_counter()
                train_step(model, optimizers[name], feed, device, no_autocast)
                step_seconds = time.perf_counter() - start
                infer_seconds = inference(model, batch[0])
                if i >= warmup:
                    times[name]["step"].append(step_seconds)
                    times[name]["inference"].append(infer_seconds)
    medians = {name: {k: statistics.median(v) for k, v in t.items()} for name, t in times.items()}
    return {
        "command": "python -m bench.channels_last" + (f" --ckpt {ckpt}" if ckpt else "") + f" --steps {steps}",
        "machine": device_description(),
        "load_average_at_end": os.getloadavg(),
        "threads": torch.get_num_threads(),
        "checkpoint": checkpoint,
        "first_batch_losses": first_losses,
        "seconds_median": medians,
        "nhwc_over_nchw": {k: round(medians["nhwc"][k] / medians["nchw"][k], 3) for k in ("step", "inference")},
        "seconds": times,
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ckpt", type=Path, help="a train.py checkpoint of the demo's detector")
    parser.add_argument("--steps", type=int, default=16)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("bench/results/channels_last_cpu.json"))
    args = parser.parse_args(argv)
    result = measure(args.ckpt, args.steps, args.warmup)
    for name, m in result["seconds_median"].items():
        print(f"{name}: step {m['step']:.3f} s, inference {m['inference']:.3f} s (medians of {args.steps})")
    ratio = result["nhwc_over_nchw"]
    print(f"nhwc / nchw: step {ratio['step']:.3f}x, inference {ratio['inference']:.3f}x")
    print("first batch's losses:", json.dumps(result["first_batch_losses"]))
    write_json(args.out, result)
    return result


if __name__ == "__main__":
    main()
