"""Resident memory of a COCO-scale annotation file, in the main process and in DataLoader workers.

    python -m bench.dataset_memory [--annotations 100000] [--workers 0 4] [--out bench/results/dataset_memory.json]

Writes a synthetic instances JSON (polygon masks, about 7 per image, COCO-like), then for each loader kind
and worker count iterates the whole dataset once and reads /proc/<pid>/smaps_rollup of the main process
and of every worker at the end:
  - PSS summed over all processes: the memory the job really costs (shared pages split among sharers);
  - each worker's private (USS) memory: what the worker copied for itself.

Loader kinds:
  - ours: maskrcnn.data.coco.CocoInstances (annotations in flat numpy arrays);
  - dicts: the same images and annotations served from pycocotools' per-image lists of Python dicts,
    the usual layout, whose reference counts are written on every read, so forked workers copy the pages.
Linux only (it reads /proc).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from pycocotools.coco import COCO
from torch.utils.data import DataLoader, Dataset

from bench.report import write_json
from maskrcnn.data.coco import CocoInstances
from maskrcnn.runinfo import device_description

IMAGE_SIZE = 64  # tiny images: the subject is the annotations, not image decoding


def write_synthetic_coco(root: Path, num_annotations: int, per_image: int = 7, seed: int = 0) -> Path:
    """instances.json with `num_annotations` polygon annotations over num_annotations/per_image images."""
    rng = np.random.default_rng(seed)
    num_images = max(1, num_annotations // per_image)
    Image.new("RGB", (IMAGE_SIZE, IMAGE_SIZE)).save(root / "image.png")
    images = [
        {"id": i + 1, "file_name": "image.png", "width": IMAGE_SIZE, "height": IMAGE_SIZE} for i in range(num_images)
    ]
    annotations = []
    for a in range(num_annotations):
        x, y = rng.uniform(0, IMAGE_SIZE / 2, 2)
        w, h = rng.uniform(4, IMAGE_SIZE / 2, 2)
        angles = np.sort(rng.uniform(0, 2 * np.pi, 12))  # 12-vertex polygon inside the box
        polygon = np.stack([x + w / 2 * (1 + np.cos(angles)), y + h / 2 * (1 + np.sin(angles))], 1)
        annotations.append(
            {
                "id": a + 1,
                "image_id": int(a % num_images) + 1,
                "category_id": int(rng.integers(1, 81)),
                "bbox": [round(float(x), 2), round(float(y), 2), round(float(w), 2), round(float(h), 2)],
                "area": float(w * h),
                "iscrowd": 0,
                "segmentation": [np.round(polygon.ravel(), 2).tolist()],
            }
        )
    categories = [{"id": c, "name": f"class{c}"} for c in range(1, 81)]
    path = root / "instances.json"
    path.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))
    return path


class DictsDataset(Dataset):
    """The baseline: annotations held as pycocotools' per-image lists of dicts, masks decoded per item."""

    def __init__(self, root: Path, annotation_file: Path) -> None:
        self.root, self.coco = root, COCO(str(annotation_file))
        self.ids = sorted(self.coco.imgs)

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int):
        info = self.coco.imgs[self.ids[index]]
        anns = self.coco.imgToAnns[info["id"]]
        image = torch.from_numpy(np.asarray(Image.open(self.root / info["file_name"]).convert("RGB")))
        masks = np.stack([self.coco.annToMask(a) for a in anns]) if anns else np.zeros((0, 1, 1), np.uint8)
        return image, {"boxes": torch.tensor([a["bbox"] for a in anns]), "masks": torch.from_numpy(masks)}


def memory_kib(pid: int) -> dict[str, int]:
    """Rss, Pss and private (USS) memory of a process, in KiB."""
    fields = {}
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            parts = line.split()
            if len(parts) == 3 and parts[2] == "kB":
                fields[parts[0].rstrip(":")] = int(parts[1])
    return {
        "rss": fields["Rss"],
        "pss": fields["Pss"],
        "uss": fields["Private_Clean"] + fields["Private_Dirty"],
    }


def measure(dataset: Dataset, workers: int) -> dict:
    """Iterates the dataset once; memory of every process at the end, before the workers exit."""
    loader = DataLoader(dataset, batch_size=16, num_workers=workers, collate_fn=list, persistent_workers=workers > 0)
    start = time.perf_counter()
    iterator = iter(loader)
    for _ in iterator:
        pass
    seconds = time.perf_counter() - start
    worker_pids = [w.pid for w in getattr(iterator, "_workers", [])]
    main = memory_kib(os.getpid())
    per_worker = [memory_kib(pid) for pid in worker_pids]
    del iterator, loader
    return {
        "workers": workers,
        "seconds": round(seconds, 2),
        "main_rss_mib": round(main["rss"] / 1024, 1),
        "total_pss_mib": round((main["pss"] + sum(w["pss"] for w in per_worker)) / 1024, 1),
        "worker_uss_mib": [round(w["uss"] / 1024, 1) for w in per_worker],
    }


def measure_kind(kind: str, root: Path, annotation_file: Path, workers: list[int]) -> list[dict]:
    """Loads the dataset in this (fresh) process and measures it with each worker count."""
    baseline = memory_kib(os.getpid())["rss"]
    start = time.perf_counter()
    dataset = CocoInstances(root, annotation_file) if kind == "ours" else DictsDataset(root, annotation_file)
    load_seconds = round(time.perf_counter() - start, 2)
    dataset_mib = round((memory_kib(os.getpid())["rss"] - baseline) / 1024, 1)
    return [
        {"kind": kind, "load_seconds": load_seconds, "dataset_rss_mib": dataset_mib, **measure(dataset, n)}
        for n in workers
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--annotations", type=int, default=100_000)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 4])
    parser.add_argument("--kinds", nargs="+", default=["ours", "dicts"], choices=["ours", "dicts"])
    parser.add_argument("--root", type=Path, default=Path("/tmp/roi_gap_dataset_memory"))
    parser.add_argument("--out", type=Path, default=Path("bench/results/dataset_memory.json"))
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    annotation_file = args.root / "instances.json"

    if args.child:  # one kind, in a fresh process, so that one kind's leftovers do not count for the other
        print(json.dumps(measure_kind(args.kinds[0], args.root, annotation_file, args.workers)))
        return

    args.root.mkdir(parents=True, exist_ok=True)
    write_synthetic_coco(args.root, args.annotations)
    json_mib = annotation_file.stat().st_size / 2**20
    print(f"{annotation_file}: {args.annotations} annotations, {json_mib:.1f} MiB of JSON")
    records = []
    for kind in args.kinds:
        child = subprocess.run(
            [
                sys.executable,
                "-m",
                "bench.dataset_memory",
                "--child",
                "--kinds",
                kind,
                "--root",
                str(args.root),
                "--workers",
                *map(str, args.workers),
            ],
            capture_output=True,
            text=True,
            check=True,
        )
        for record in json.loads(child.stdout.strip().splitlines()[-1]):
            records.append(record)
            print(json.dumps(record))

    report = {
        "annotations": args.annotations,
        "images": max(1, args.annotations // 7),
        "json_mib": round(json_mib, 1),
        "machine": device_description(),
        "records": records,
    }
    write_json(args.out, report)


if __name__ == "__main__":
    main()
