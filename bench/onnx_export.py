"""An exported detector in onnxruntime against PyTorch, end to end, on many images: how close, how fast.

Each checkpoint is exported as `python -m maskrcnn.export` exports it (with score_thresh as given), then run on
--images synthetic images (flat rectangles on noise, random sizes between 0.5x and 2.5x the model's resize
size) in PyTorch (CPU) and in onnxruntime (CPU). Per checkpoint it reports the detections compared, how many
images were equal (maskrcnn/export_check.py: labels, boxes within 0.5 px, scores within 1e-3, mask IoU >= 0.99),
the largest box and score differences, the smallest mask IoU, and the median seconds per image of each.

    python -m bench.onnx_export CKPT [CKPT ...] [--images 20] [--score-thresh 0.0] [--out bench/results/x.json]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch

from bench.report import write_json
from bench.roi_ops import cpu_model
from maskrcnn.config import compose_config
from maskrcnn.export import export, synthetic_image
from maskrcnn.export_check import compare, onnx_detections, onnx_session, torch_detections
from maskrcnn.trained_model import load_detector

RESULTS = Path(__file__).resolve().parent / "results"


def measure(checkpoint: str, images: int, score_thresh: float, seed: int = 0) -> dict:
    module, _ = load_detector(checkpoint)
    model = module.model.eval()
    model.roi_heads.score_thresh = score_thresh
    side = int(model.transform.min_size[-1])
    g = torch.Generator().manual_seed(seed)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.onnx"
        export(compose_config("export", [f"ckpt_path={checkpoint}", f"output={path}", f"score_thresh={score_thresh}",
                                         "check=false"]))  # fmt: skip
        session = onnx_session(path)
        rows, torch_s, onnx_s = [], [], []
        for i in range(images):
            h, w = (int(side * s) for s in (torch.rand(2, generator=g) * 2 + 0.5).tolist())
            image = synthetic_image(h, w, seed=seed * 1000 + i)
            start = time.perf_counter()
            ours = torch_detections(model, image)
            torch_s.append(time.perf_counter() - start)
            start = time.perf_counter()
            exported = onnx_detections(session, image)
            onnx_s.append(time.perf_counter() - start)
            rows.append({"image_size": [h, w], **compare(ours, exported)})
    return {
        "checkpoint": str(checkpoint),
        "roi": dict(module.hparams.roi).get("name"),
        "score_thresh": score_thresh,
        "images": images,
        "images_equal": sum(r["equal"] for r in rows),
        "detections": sum(r["detections"] for r in rows),
        "near_tie_swaps": sum(r["near_tie_swaps"] for r in rows),
        "unmatched": sum(r["detections"] + r["onnx_detections"] - 2 * (r["matched"] + r["near_tie_swaps"])
                         for r in rows),  # fmt: skip
        "max_box_diff_px": max(r["max_box_diff_px"] for r in rows),
        "max_score_diff": max(r["max_score_diff"] for r in rows),
        "min_mask_iou": min(r["min_mask_iou"] for r in rows),
        "median_seconds_pytorch": statistics.median(torch_s),
        "median_seconds_onnxruntime": statistics.median(onnx_s),
        "per_image": rows,
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoints", nargs="+")
    parser.add_argument("--images", type=int, default=20)
    parser.add_argument("--score-thresh", type=float, default=0.0)
    parser.add_argument("--out", default=str(RESULTS / "onnx_export.json"))
    args = parser.parse_args(argv)
    import onnxruntime

    load_average = os.getloadavg()
    results = [measure(c, args.images, args.score_thresh) for c in args.checkpoints]
    for r in results:
        print({k: v for k, v in r.items() if k != "per_image"})
    record = {
        "command": "python -m bench.onnx_export " + " ".join(args.checkpoints)
        + f" --images {args.images} --score-thresh {args.score_thresh}",
        "versions": {"torch": torch.__version__, "onnxruntime": onnxruntime.__version__},
        "machine": {"cpu_model": cpu_model(), "cpu_cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                    "load_average_at_start": load_average},  # fmt: skip
        "results": results,
    }
    write_json(Path(args.out), record)
    return record


if __name__ == "__main__":
    main()
