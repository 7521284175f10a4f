"""Built-in synthetic COCO-format instance segmentation dataset ("shapes").

Every class has a roughly square box, so only the mask tells them apart: a ring's hole, a cross's notches
and a triangle's missing corners are what a coarse RoI feature (RoIPool) loses and RoIAlign keeps.

Layout written under ``root`` (read back by ``CocoInstances`` through pycocotools, like real COCO)::

    root/spec.json                              generation parameters; written last, so it marks completeness
    root/train/000000.png ...                   RGB uint8 images, image_size x image_size
    root/val/000000.png ...
    root/annotations/instances_{train,val}.json  COCO instances, segmentation = compressed RLE (counts: str)

Generation is deterministic per (seed, split, image index), independent of the number of worker processes.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import shutil
import time
import uuid
from functools import partial
from pathlib import Path

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils

# Bump when the generator's output changes for the same parameters, so stale datasets are regenerated.
GENERATOR_VERSION = 1
SHAPE_CLASSES = ("circle", "square", "triangle", "ring", "cross", "diamond")
_SPLIT_CODE = {"train": 0, "val": 1}


def _upsample(noise: np.ndarray, h: int, w: int) -> np.ndarray:
    """Separable linear interpolation [g_h, g_w, C] -> [h, w, C] (smooth noise). Elementwise gathers, not
    BLAS, so the bytes do not depend on the thread count."""

    def along(arr: np.ndarray, n_out: int, axis: int) -> np.ndarray:
        n_in = arr.shape[axis]
        pos = (np.arange(n_out) + 0.5) * (n_in - 1) / n_out
        lo = np.floor(pos).astype(int)
        hi = np.minimum(lo + 1, n_in - 1)
        frac = (pos - lo).reshape([-1 if a == axis else 1 for a in range(arr.ndim)])
        return np.take(arr, lo, axis) * (1 - frac) + np.take(arr, hi, axis) * frac

    return along(along(noise, h, 0), w, 1)


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """Textured background, float [H, W, 3]: smooth noise at two scales + a linear gradient + a few stripes."""
    base = rng.uniform(50, 205, size=3)
    img = base + _upsample(rng.normal(0, 28, (6, 6, 3)), size, size)
    img += _upsample(rng.normal(0, 12, (size // 8 + 2, size // 8 + 2, 3)), size, size)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64) / size
    theta = rng.uniform(0, 2 * np.pi)
    img += rng.uniform(-40, 40, 3) * (np.cos(theta) * xx + np.sin(theta) * yy)[..., None]
    # Distractor stripes: straight, high-contrast edges that are not objects.
    for _ in range(rng.integers(0, 4)):
        t = rng.uniform(0, np.pi)
        dist = np.abs(np.cos(t) * xx + np.sin(t) * yy - rng.uniform(-0.2, 1.2)) * size
        img[dist < rng.uniform(0.5, 2.5)] = rng.uniform(0, 255, 3)
    return img


def _shape_mask(
    cls: str, dx: np.ndarray, dy: np.ndarray, radius: float, rng: np.random.Generator
) -> np.ndarray:
    """Boolean mask of one shape on a grid of offsets (dx, dy) from its centre; ``radius`` is half its extent."""
    if cls in ("square", "diamond"):
        # Near axis-aligned, so square and diamond stay distinct (a 45-degree square would be a diamond).
        theta = rng.uniform(-0.35, 0.35)
    elif cls == "cross":
        theta = rng.uniform(0, np.pi / 2)
    else:
        theta = rng.uniform(0, 2 * np.pi)
    u = dx * np.cos(theta) + dy * np.sin(theta)
    v = -dx * np.sin(theta) + dy * np.cos(theta)
    r2 = dx * dx + dy * dy
    if cls == "circle":
        return r2 <= radius**2
    if cls == "ring":
        inner = rng.uniform(0.45, 0.65) * radius
        return (r2 <= radius**2) & (r2 >= inner**2)
    if cls == "square":
        return np.maximum(np.abs(u), np.abs(v)) <= 0.8 * radius
    if cls == "diamond":
        aspect = rng.uniform(0.55, 0.75)
        return np.abs(u) / (aspect * radius) + np.abs(v) / radius <= 1.0
    if cls == "triangle":
        # Equilateral: three half-planes at inradius R/2 (circumradius R).
        inside = np.ones_like(u, dtype=bool)
        for k in range(3):
            t = 2 * np.pi * k / 3
            inside &= u * np.cos(t) + v * np.sin(t) <= radius / 2
        return inside
    if cls == "cross":
        arm = rng.uniform(0.22, 0.32) * radius
        au, av = np.abs(u), np.abs(v)
        return ((au <= radius) & (av <= arm)) | ((av <= radius) & (au <= arm))
    raise ValueError(f"unknown shape class {cls!r}")


def _render_image(
    seed: int,
    split: str,
    index: int,
    image_size: int,
    min_size: float,
    max_size: float,
    max_objects: int,
    min_visible: float,
) -> tuple[np.ndarray, list[dict]]:
    """One image: uint8 [S, S, 3] and its instances (category_id, visible mask [S, S] bool), paint order."""
    rng = np.random.default_rng([seed, _SPLIT_CODE[split], index])
    size = image_size
    img = _background(rng, size)
    objects = []
    for _ in range(rng.integers(1, max_objects + 1)):
        cls_idx = int(rng.integers(len(SHAPE_CLASSES)))
        extent = float(np.exp(rng.uniform(np.log(min_size), np.log(max_size))))
        radius = extent / 2
        cx, cy = rng.uniform(radius, size - radius, 2)
        # Local patch around the centre (a rotated square reaches radius * sqrt(2)).
        x0, y0 = (max(int(c - 1.5 * radius) - 1, 0) for c in (cx, cy))
        x1, y1 = (min(int(c + 1.5 * radius) + 2, size) for c in (cx, cy))
        dy, dx = np.mgrid[y0:y1, x0:x1].astype(np.float64)
        patch = _shape_mask(SHAPE_CLASSES[cls_idx], dx + 0.5 - cx, dy + 0.5 - cy, radius, rng)
        full = np.zeros((size, size), dtype=bool)
        full[y0:y1, x0:x1] = patch
        # Colour far enough from the local background to be visible; a mild shading gradient on top.
        local = img[y0:y1, x0:x1].reshape(-1, 3).mean(0)
        for _ in range(20):
            colour = rng.uniform(0, 255, 3)
            if np.linalg.norm(colour - local) > 90:
                break
        shade = rng.uniform(-25, 25, 3)[None, :] * ((dx[patch] - cx) / extent)[:, None]
        objects.append(
            {
                "category_id": cls_idx + 1,
                "full": full,
                "box": (y0, y1, x0, x1),
                "pixels": colour + shade,
                "patch": patch,
            }
        )

    # Occlusion: later objects cover earlier ones. Drop an instance whose visible part is < min_visible of
    # its full area and do not paint it, so every visible object pixel belongs to an annotated instance.
    def visible_masks(objs: list[dict]) -> list[np.ndarray]:
        owner = np.full((size, size), -1, dtype=np.int32)
        for i, o in enumerate(objs):
            owner[o["full"]] = i
        return [owner == i for i in range(len(objs))]

    vis = visible_masks(objects)
    objects = [o for o, v in zip(objects, vis, strict=True) if v.sum() >= min_visible * o["full"].sum() and v.any()]
    vis = visible_masks(objects)  # removing occluders only grows the others' visible parts
    for o in objects:
        y0, y1, x0, x1 = o["box"]
        region = img[y0:y1, x0:x1]
        region[o["patch"]] = o["pixels"]
    img += rng.normal(0, 6, img.shape)
    img = np.clip(np.rint(img), 0, 255).astype(np.uint8)
    return img, [{"category_id": o["category_id"], "mask": v} for o, v in zip(objects, vis, strict=True)]


def _generate_one(index: int, *, out_dir: Path, split: str, params: dict) -> tuple[int, str, list[dict]]:
    """Render, write the PNG and encode masks (one batched ``mask.encode``); returns COCO annotation stubs."""
    img, instances = _render_image(
        params["seed"],
        split,
        index,
        params["image_size"],
        params["min_size"],
        params["max_size"],
        params["max_objects"],
        params["min_visible"],
    )
    file_name = f"{index:06d}.png"
    Image.fromarray(img).save(out_dir / file_name)
    anns = []
    if instances:
        stack = np.asfortranarray(np.stack([inst["mask"] for inst in instances], axis=-1).astype(np.uint8))
        rles = mask_utils.encode(stack)
        areas, boxes = mask_utils.area(rles), mask_utils.toBbox(rles)
        for inst, rle, area, box in zip(instances, rles, areas, boxes, strict=True):
            anns.append(
                {
                    "category_id": inst["category_id"],
                    "segmentation": {
                        "size": [int(s) for s in rle["size"]],
                        "counts": rle["counts"].decode("ascii"),
                    },
                    "area": float(area),
                    "bbox": [float(b) for b in box],
                    "iscrowd": 0,
                }
            )
    return index, file_name, anns


def _generate_split(split: str, num_images: int, tmp_root: Path, params: dict, workers: int) -> None:
    out_dir = tmp_root / split
    out_dir.mkdir(parents=True)
    job = partial(_generate_one, out_dir=out_dir, split=split, params=params)
    if workers > 1 and num_images >= 64:
        with mp.get_context("fork").Pool(workers) as pool:
            results = pool.map(job, range(num_images), chunksize=16)
    else:
        results = [job(i) for i in range(num_images)]
    images, annotations = [], []
    for index, file_name, anns in sorted(results, key=lambda r: r[0]):
        image_id = index + 1
        size = params["image_size"]
        images.append({"id": image_id, "file_name": file_name, "width": size, "height": size})
        for ann in anns:
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, **ann})
    coco = {
        "info": {"description": "synthetic shapes", "generator_version": GENERATOR_VERSION},
        "images": images,
        "annotations": annotations,
        "categories": [
            {"id": i + 1, "name": n, "supercategory": "shape"} for i, n in enumerate(SHAPE_CLASSES)
        ],
    }
    (tmp_root / "annotations").mkdir(exist_ok=True)
    with open(tmp_root / "annotations" / f"instances_{split}.json", "w") as f:
        json.dump(coco, f, separators=(",", ":"))


def _read_spec(root: Path) -> dict | None:
    try:
        return json.loads((root / "spec.json").read_text())
    except (OSError, ValueError):
        return None


def ensure_shapes_dataset(
    root: str | os.PathLike,
    *,
    num_train: int = 2000,
    num_val: int = 200,
    image_size: int = 256,
    seed: int = 0,
    min_size: float = 12,
    max_size: float = 128,
    max_objects: int = 6,
    min_visible: float = 0.3,
    workers: int | None = None,
) -> Path:
    """Generate the shapes dataset under ``root`` unless a complete one with the same parameters is there.

    Idempotent: ``root/spec.json`` records the parameters; a match is reused, a mismatch regenerated. Writing
    goes to a temporary sibling directory renamed into place at the end, so an interrupted run never leaves
    a partial dataset that would be reused. ``workers`` (default: CPU count) does not change the output.
    Returns ``root`` as a Path.
    """
    root = Path(root)
    spec = {
        "generator_version": GENERATOR_VERSION,
        "num_train": int(num_train),
        "num_val": int(num_val),
        "image_size": int(image_size),
        "seed": int(seed),
        "min_size": float(min_size),
        "max_size": float(max_size),
        "max_objects": int(max_objects),
        "min_visible": float(min_visible),
    }
    if not 0 < min_size <= max_size <= image_size:
        raise ValueError(
            f"need 0 < min_size <= max_size <= image_size, got {min_size}, {max_size}, {image_size}"
        )
    if _read_spec(root) == spec:
        return root
    if root.exists() and any(root.iterdir()) and _read_spec(root) is None:
        raise FileExistsError(
            f"{root} exists, is not empty and has no shapes spec.json; refusing to overwrite it"
        )

    workers = workers or min(os.cpu_count() or 1, 8)
    t0 = time.perf_counter()
    print(
        f"[shapes] generating {num_train} train + {num_val} val images ({image_size}px) into {root} ...",
        flush=True,
    )
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = root.parent / f".{root.name}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        _generate_split("train", num_train, tmp, spec, workers)
        _generate_split("val", num_val, tmp, spec, workers)
        (tmp / "spec.json").write_text(json.dumps(spec, indent=2, sort_keys=True))
        if root.exists():  # stale dataset (other spec) or an empty dir: move aside, then swap in
            old = root.parent / f".{root.name}.old-{uuid.uuid4().hex[:8]}"
            root.rename(old)
            shutil.rmtree(old, ignore_errors=True)
        try:
            tmp.rename(root)
        except OSError:
            # Another process (e.g. a second DDP node) finished first; accept its dataset if it matches.
            if _read_spec(root) != spec:
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"[shapes] done in {time.perf_counter() - t0:.1f}s", flush=True)
    return root
