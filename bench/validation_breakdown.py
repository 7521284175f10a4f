"""Where one validation's time goes, part by part, and how close its backbone runs to this machine's GEMM rate.

    python -m bench.validation_breakdown --ckpt RUN/checkpoints/last.ckpt [--out JSON]

The checkpoint's detector (in the layout it trained in, `train.channels_last`) runs over the checkpoint's val
set as the validation loop runs it: same-size batches from its data module, eval mode, no grad. Timed per part
(forward hooks, summed over the val set): the transform, the backbone with its FPN, the RPN, the box branch's
extractor / head / predictor, the mask branch's extractor / head / predictor, the rest of roi_heads (detection
post-processing: decode, per-class NMS, mask probabilities), the paste at image size; then the COCO results
(thresholding and RLE encoding) and the COCO scoring. The FLOPs of the conv-heavy parts (FlopCounterMode over an
untimed pass of the val set first) over their seconds, against a 2048^3 fp32 torch.mm in the same process and
threads, say how far each part is from this machine's limit. Printed as a table; JSON to --out.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

import maskrcnn.detector
from bench.flops import gemm_flops_per_s
from bench.report import write_json
from maskrcnn.checkpoints import read_checkpoint
from maskrcnn.coco_eval import CocoEvaluator, detections_to_coco
from maskrcnn.runinfo import device_description
from maskrcnn.trained_model import load_detector

HEAD_PARTS = ("box_extractor", "box_head", "box_predictor", "mask_extractor", "mask_head", "mask_predictor")
# The model's forward, part by part (model_rest: resizing the boxes back, the hooks' own time); then what follows it.
MODEL_PARTS = ("transform", "backbone", "rpn", *HEAD_PARTS, "roi_heads_rest", "paste")
# The parts whose work is convolutions and matrix products, by their path below the detector.
FLOP_PARTS = {
    "backbone": "backbone",
    "rpn": "rpn",
    "box_head": "roi_heads.box_head",
    "mask_head": "roi_heads.mask_head",
    "mask_predictor": "roi_heads.mask_predictor",
}
AFTER_MODEL = ("coco_results", "coco_scoring", "data")  # data: loading the val batches, the rest of total
REPORTED = ("total", "model", *MODEL_PARTS, "model_rest", *AFTER_MODEL)


def timed_parts(model: nn.Module, seconds: defaultdict) -> None:
    """Adds each part's forward seconds to `seconds[part]` on every call."""
    heads = model.roi_heads
    parts = {
        "transform": model.transform,
        "backbone": model.backbone,
        "rpn": model.rpn,
        "box_extractor": heads.box_extractor,
        "box_head": heads.box_head,
        "box_predictor": heads.box_predictor,
        "mask_extractor": heads.mask_extractor,
        "mask_head": heads.mask_head,
        "mask_predictor": heads.mask_predictor,
        "roi_heads": heads,
    }
    for name, module in parts.items():
        started: list[float] = []
        module.register_forward_pre_hook(lambda _m, _a, started=started: started.append(time.perf_counter()))
        module.register_forward_hook(
            lambda _m, _a, _o, name=name, started=started: seconds.__setitem__(
                name, seconds[name] + time.perf_counter() - started.pop()
            )
        )


@contextlib.contextmanager
def timed_paste(seconds: defaultdict) -> Iterator[None]:
    """Times the detector's call of paste_masks_in_images into seconds["paste"]."""
    paste = maskrcnn.detector.paste_masks_in_images

    def timed(*args, **kwargs):
        start = time.perf_counter()
        result = paste(*args, **kwargs)
        seconds["paste"] += time.perf_counter() - start
        return result

    maskrcnn.detector.paste_masks_in_images = timed
    try:
        yield
    finally:
        maskrcnn.detector.paste_masks_in_images = paste


def counted_flops(model: nn.Module, loader) -> dict[str, int]:
    """FLOPs (convolutions and matrix products) of each conv-heavy part over one untimed pass of `loader`."""
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        for images, _ in loader:
            model(list(images))
    counts, root = counter.get_flop_counts(), type(model).__name__
    return {part: sum(counts.get(f"{root}.{path}", {}).values()) for part, path in FLOP_PARTS.items()}


def measure(ckpt: Path) -> dict:
    module, run_config = load_detector(ckpt)
    model = module.model.eval()
    datamodule = instantiate(OmegaConf.create(run_config).data.module, classes=module.hparams.classes)
    datamodule.setup("validate")
    dataset = datamodule.val_dataset
    evaluator = CocoEvaluator(dataset.annotation_file)
    flops = counted_flops(model, datamodule.val_dataloader())
    seconds: defaultdict = defaultdict(float)
    timed_parts(model, seconds)
    bbox, segm, image_ids, detections = [], [], [], 0
    with torch.no_grad(), timed_paste(seconds):
        start = time.perf_counter()
        for images, targets in datamodule.val_dataloader():
            model_start = time.perf_counter()
            outputs = model(list(images))
            encode_start = time.perf_counter()
            seconds["model"] += encode_start - model_start
            for output, target in zip(outputs, targets, strict=True):
                image_ids.append(int(target["image_id"]))
                boxes, masks = detections_to_coco(image_ids[-1], output, dataset.contiguous_to_category_id)
                bbox += boxes
                segm += masks
                detections += len(output["scores"])
            seconds["coco_results"] += time.perf_counter() - encode_start
        score_start = time.perf_counter()
        metrics = evaluator.score(bbox, segm, image_ids=image_ids).metrics
        seconds["coco_scoring"] = time.perf_counter() - score_start
        seconds["total"] = time.perf_counter() - start
    seconds["roi_heads_rest"] = seconds.pop("roi_heads") - sum(seconds[name] for name in HEAD_PARTS)
    seconds["model_rest"] = seconds["model"] - sum(seconds[name] for name in MODEL_PARTS)
    seconds["data"] = seconds["total"] - seconds["model"] - seconds["coco_results"] - seconds["coco_scoring"]
    gemm = statistics.median(gemm_flops_per_s(torch.device("cpu")))
    return {
        "command": f"python -m bench.validation_breakdown --ckpt {ckpt}",
        "machine": device_description(),
        "threads": torch.get_num_threads(),
        "checkpoint_step": int(read_checkpoint(ckpt, mmap=True).get("global_step", -1)),
        "channels_last": bool(module.hparams.get("channels_last", False)),
        "images": len(image_ids),
        "detections": detections,
        "seconds": {name: round(seconds[name], 3) for name in REPORTED},
        "gflops": {part: round(count / 1e9, 1) for part, count in flops.items()},
        "gemm_gflops_per_s": round(gemm / 1e9, 1),
        "gemm_fraction": {part: round(count / seconds[part] / gemm, 3) for part, count in flops.items()},
        "metrics": metrics,
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ckpt", type=Path, required=True, help="a train.py checkpoint")
    parser.add_argument("--out", type=Path, default=Path("bench/results/validation_breakdown_cpu.json"))
    args = parser.parse_args(argv)
    result = measure(args.ckpt)
    total = result["seconds"]["total"]
    print(f"{result['images']} images, {result['detections']} detections, step {result['checkpoint_step']}, "
          f"channels_last {result['channels_last']}, {result['threads']} threads: {total:.2f} s")  # fmt: skip
    for name, value in result["seconds"].items():
        print(f"  {name:15s} {value:7.2f} s  {100 * value / total:5.1f}%")
    print(f"GFLOP and achieved FLOP/s as a fraction of a 2048^3 fp32 GEMM's {result['gemm_gflops_per_s']:.0f} GFLOP/s:")
    for part, gflops in result["gflops"].items():
        print(f"  {part:15s} {gflops:7.0f} GFLOP  {result['gemm_fraction'][part]:.2f}")
    write_json(args.out, result)
    return result


if __name__ == "__main__":
    main()
