"""COCO evaluation speed: pycocotools vs faster-coco-eval on the same synthetic ground truth and results.

    python -m bench.coco_eval [--images 5000] [--out bench/results/coco_eval_cpu.json]

The ground truth is a COCO-format instances file with about 7 polygon instances per image over 80 classes;
the results are every instance found again with a jittered box and polygon, a random score, plus 3 false
positives per image. Both backends score the same lists (bbox and segm: loadRes, evaluate, accumulate,
summarize) through maskrcnn.coco_eval.CocoEvaluator; the script prints seconds per backend, the ratio,
and the largest difference between their 12 metrics.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
from pycocotools import mask as mask_utils

from bench.report import write_json
from maskrcnn.coco_eval import CocoEvaluator
from maskrcnn.runinfo import device_description

IMAGE_SIZE = 256


def _polygon(rng: np.random.Generator, box: np.ndarray) -> list[float]:
    """A 12-vertex star-ish polygon inside box (x, y, w, h)."""
    x, y, w, h = box
    angles = np.linspace(0, 2 * np.pi, 12, endpoint=False)
    radius = rng.uniform(0.6, 1.0, 12)
    xs = x + w / 2 * (1 + radius * np.cos(angles))
    ys = y + h / 2 * (1 + radius * np.sin(angles))
    return np.round(np.stack([xs, ys], 1).ravel(), 2).tolist()


def _rle(polygon: list[float]) -> dict:
    rle = mask_utils.merge(mask_utils.frPyObjects([polygon], IMAGE_SIZE, IMAGE_SIZE))
    return {"size": rle["size"], "counts": rle["counts"].decode("ascii")}


def synthetic_coco(num_images: int, seed: int = 0) -> tuple[dict, list[dict], list[dict]]:
    """(instances dict, bbox results, segm results) for `num_images` images."""
    rng = np.random.default_rng(seed)
    images, annotations, bbox_results, segm_results = [], [], [], []

    def detect(image_id: int, category: int, box: np.ndarray, score: float) -> None:
        polygon = _polygon(rng, box)
        bbox_results.append(
            {"image_id": image_id, "category_id": category, "bbox": box.round(2).tolist(), "score": score}
        )
        segm_results.append(
            {"image_id": image_id, "category_id": category, "segmentation": _rle(polygon), "score": score}
        )

    for image_id in range(1, num_images + 1):
        images.append({"id": image_id, "file_name": f"{image_id:06d}.png", "width": IMAGE_SIZE, "height": IMAGE_SIZE})
        for _ in range(rng.poisson(7)):
            w, h = rng.uniform(8, IMAGE_SIZE / 2, 2)
            box = np.array([rng.uniform(0, IMAGE_SIZE - w), rng.uniform(0, IMAGE_SIZE - h), w, h])
            category = int(rng.integers(1, 81))
            polygon = _polygon(rng, box)
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": category,
                    "bbox": box.round(2).tolist(),
                    "area": float(mask_utils.area(mask_utils.frPyObjects([polygon], IMAGE_SIZE, IMAGE_SIZE)).sum()),
                    "iscrowd": 0,
                    "segmentation": [polygon],
                }
            )
            jittered = np.clip(box + rng.normal(0, 0.08 * min(w, h), 4), 1, IMAGE_SIZE - 1)
            detect(image_id, category, jittered, float(rng.uniform(0.05, 1.0)))
        for _ in range(3):
            w, h = rng.uniform(8, IMAGE_SIZE / 2, 2)
            box = np.array([rng.uniform(0, IMAGE_SIZE - w), rng.uniform(0, IMAGE_SIZE - h), w, h])
            detect(image_id, int(rng.integers(1, 81)), box, float(rng.uniform(0.05, 0.6)))
    categories = [{"id": c, "name": f"class{c}"} for c in range(1, 81)]
    return {"images": images, "annotations": annotations, "categories": categories}, bbox_results, segm_results


def time_backends(gt_file: Path, bbox: list[dict], segm: list[dict], repeat: int) -> dict:
    """Best-of-`repeat` seconds and the metrics of each backend on the same results."""
    report = {}
    for backend in ("pycocotools", "faster_coco_eval"):
        evaluator = CocoEvaluator(gt_file, backend)
        times = []
        for _ in range(repeat):
            start = time.perf_counter()
            metrics = evaluator.evaluate(bbox, segm)
            times.append(time.perf_counter() - start)
        report[backend] = {"seconds": round(min(times), 3), "metrics": metrics}
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=5000)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--root", type=Path, default=Path("/tmp/roi_gap_coco_eval"))
    parser.add_argument("--out", type=Path, default=Path("bench/results/coco_eval_cpu.json"))
    args = parser.parse_args()

    gt, bbox, segm = synthetic_coco(args.images)
    args.root.mkdir(parents=True, exist_ok=True)
    gt_file = args.root / "instances.json"
    gt_file.write_text(json.dumps(gt))
    print(f"{args.images} images, {len(gt['annotations'])} instances, {len(bbox)} detections")
    load_at_start = list(os.getloadavg())  # other jobs on the machine slow both backends, not necessarily alike
    report = time_backends(gt_file, bbox, segm, args.repeat)
    ref, fast = report["pycocotools"], report["faster_coco_eval"]
    max_diff = max(abs(ref["metrics"][k] - fast["metrics"][k]) for k in ref["metrics"])
    speedup = ref["seconds"] / fast["seconds"]
    for backend, r in report.items():
        print(f"{backend:>17}: {r['seconds']:.2f} s  segm/AP={r['metrics']['segm/AP']:.4f}")
    print(f"faster_coco_eval is {speedup:.2f}x pycocotools; largest metric difference {max_diff:.2e}")
    record = {
        "images": args.images,
        "instances": len(gt["annotations"]),
        "detections": len(bbox),
        "repeat": args.repeat,
        "machine": device_description(),
        "load_average_at_start": load_at_start,
        "load_average_at_end": list(os.getloadavg()),
        "speedup": round(speedup, 2),
        "max_metric_difference": max_diff,
        **report,
    }
    write_json(args.out, record)


if __name__ == "__main__":
    main()
