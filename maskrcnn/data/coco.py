"""COCO-format instance segmentation dataset.

Shapes: M instances in an image of H x W pixels, K foreground classes (contiguous labels 1..K, 0 = background).

Annotations are held in flat numpy arrays (per-image offsets into per-annotation arrays; segmentations
pickled into one uint8 buffer), not in per-image Python dicts: DataLoader workers fork the dataset, and
touching millions of Python objects would copy them into every worker through refcount writes.
Masks are decoded lazily, per item, with pycocotools.
"""

from __future__ import annotations

import json
import os
import pickle
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from pycocotools import mask as mask_utils

# Segmentation kinds stored per annotation.
_POLYGONS, _RLE, _NONE = 0, 1, 2


class DatasetNotFoundError(Exception):
    """A dataset directory or annotation file does not exist."""


class BadDataError(ValueError):
    """Malformed annotations or images; the message names the file and the offending id."""


def dataset_not_found_message(what: str, path: str | os.PathLike) -> str:
    """One paragraph: where we looked and what to do about it."""
    return (
        f"Could not find the {what} at '{path}'. If this is COCO, set the COCO_ROOT environment variable to the "
        "directory that holds train2017/, val2017/ and annotations/ (or override data.root=...); to run without "
        "any download, use the built-in synthetic dataset with `data=shapes`, which is generated on first use."
    )


def load_json(path: str | os.PathLike) -> dict:
    """json.load with errors that name the file (and line/column for syntax errors)."""
    path = Path(path)
    if not path.is_file():
        raise DatasetNotFoundError(dataset_not_found_message("annotation file", path))
    try:
        with open(path) as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise BadDataError(f"{path}: malformed JSON at line {e.lineno}, column {e.colno}: {e.msg}") from e


def _segmentation_kind(seg: object, ann_id: int, path: Path) -> int:
    if seg is None or (isinstance(seg, list) and len(seg) == 0):
        return _NONE
    if isinstance(seg, dict):
        if "counts" not in seg or "size" not in seg:
            raise BadDataError(f"{path}: annotation id {ann_id}: RLE segmentation needs 'counts' and 'size'")
        return _RLE
    if isinstance(seg, list):
        for poly in seg:
            if not isinstance(poly, list) or len(poly) < 6 or len(poly) % 2:
                n = len(poly) / 2 if isinstance(poly, list) else "?"
                raise BadDataError(
                    f"{path}: annotation id {ann_id}: polygon with {n} points; need at least 3 (x, y) points"
                )
        return _POLYGONS
    raise BadDataError(f"{path}: annotation id {ann_id}: unsupported segmentation type {type(seg).__name__}")


class CocoInstances(torch.utils.data.Dataset):
    """COCO instances JSON + image directory -> (image, target), torchvision detection style.

    ``dataset[i]`` returns ``(image, target)``:
        image: Float[3, H, W] in [0, 1]
        target: boxes Float[M, 4] (xyxy, absolute pixels), labels Int64[M] (contiguous 1..K) and
                masks UInt8[M, H, W] of the M non-crowd instances (in file order); crowd_boxes Float[C, 4] of
                the crowd regions, which training ignores (their segmentations are not decoded); image_id int.

    ``on_bad_image``: "error" raises BadDataError naming the file and image id for a missing or unreadable
    image; "skip" warns and returns the next readable image, whose target then lists the skipped ids under
    ``skipped_image_ids`` (so the training process can count them, whichever worker read them).
    Annotations with a zero-area or negative box are dropped with one warning naming their ids.
    ``filter_empty``: leave out images without a non-crowd annotation (for training, as torchvision's and
    detectron2's COCO loaders do).
    ``classes``: the model's classes, ``[{"id", "name"}]`` for labels 1..K; the file's categories must be among
    them (a validation set scored by a model trained elsewhere). None: the file's categories in id order.
    """

    def __init__(
        self,
        images_dir: str | os.PathLike,
        annotation_file: str | os.PathLike,
        on_bad_image: str = "error",
        filter_empty: bool = False,
        classes: list[dict] | None = None,
    ) -> None:
        if on_bad_image not in ("error", "skip"):
            raise ValueError(f"on_bad_image must be 'error' or 'skip', got {on_bad_image!r}")
        self.images_dir = Path(images_dir)
        self.annotation_file = Path(annotation_file)
        self.on_bad_image = on_bad_image
        self.filter_empty = filter_empty
        if not self.images_dir.is_dir():
            raise DatasetNotFoundError(dataset_not_found_message("image directory", self.images_dir))
        self._load(load_json(self.annotation_file), classes)

    def _load(self, data: dict, classes: list[dict] | None) -> None:
        path = self.annotation_file
        for key in ("images", "categories"):
            if key not in data:
                raise BadDataError(f"{path}: missing top-level key '{key}'")
        cats = sorted(({"id": int(c["id"]), "name": c["name"]} for c in data["categories"]), key=lambda c: c["id"])
        if classes is not None:
            known = {int(c["id"]) for c in classes}
            unknown = sorted(c["id"] for c in cats if c["id"] not in known)
            if unknown:
                raise BadDataError(
                    f"{path}: category ids {unknown[:20]} are not among the model's {len(known)} classes "
                    f"(ids {sorted(known)[:20]}{' ...' if len(known) > 20 else ''})"
                )
            cats = [{"id": int(c["id"]), "name": c["name"]} for c in classes]
        self.classes = cats  # labels 1..K: {"id": category id, "name"}
        self.category_id_to_contiguous = {c["id"]: k + 1 for k, c in enumerate(cats)}
        self.contiguous_to_category_id = {k: cid for cid, k in self.category_id_to_contiguous.items()}
        self.category_names = [c["name"] for c in cats]  # index k-1 for contiguous label k

        images = data["images"]
        if self.filter_empty:
            images = self._with_instances(images, data.get("annotations", []))
        self.image_ids = np.array([im["id"] for im in images], dtype=np.int64)
        self.widths = np.array([im["width"] for im in images], dtype=np.int64)
        self.heights = np.array([im["height"] for im in images], dtype=np.int64)
        self.file_names = np.array([im["file_name"] for im in images], dtype=np.str_)
        id_to_index = {int(i): k for k, i in enumerate(self.image_ids)}
        if len(id_to_index) != len(images):
            raise BadDataError(f"{path}: duplicate image ids")

        img_idx, ann_ids, boxes, labels, crowd, kinds, segs, dropped = [], [], [], [], [], [], [], []
        for ann in data.get("annotations", []):
            ann_id = ann.get("id")
            k = id_to_index.get(ann.get("image_id"))
            if k is None and self.filter_empty and ann.get("image_id") in self._empty_image_ids:
                continue
            if k is None:
                raise BadDataError(f"{path}: annotation id {ann_id} references missing image id {ann.get('image_id')}")
            label = self.category_id_to_contiguous.get(ann.get("category_id"))
            if label is None:
                raise BadDataError(
                    f"{path}: annotation id {ann_id} references unknown category id {ann.get('category_id')}"
                )
            x, y, w, h = ann["bbox"]
            if w <= 0 or h <= 0:
                dropped.append(ann_id)
                continue
            seg = ann.get("segmentation")
            img_idx.append(k)
            ann_ids.append(ann_id)
            boxes.append((x, y, x + w, y + h))
            labels.append(label)
            crowd.append(int(ann.get("iscrowd", 0)))
            kinds.append(_segmentation_kind(seg, ann_id, path))
            segs.append(pickle.dumps(seg, protocol=pickle.HIGHEST_PROTOCOL))
        if dropped:
            shown = ", ".join(map(str, dropped[:20])) + (" ..." if len(dropped) > 20 else "")
            warnings.warn(
                f"{path}: dropped {len(dropped)} annotation(s) with zero-area or negative boxes, "
                f"annotation ids: {shown}",
                stacklevel=3,
            )

        # Sort annotations by image (stable, keeps file order within an image) -> per-image offsets.
        order = np.argsort(np.asarray(img_idx, dtype=np.int64), kind="stable")
        counts = np.bincount(np.asarray(img_idx, dtype=np.int64), minlength=len(images))
        self._ann_offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        self._ann_ids = np.asarray(ann_ids, dtype=np.int64)[order]
        self._boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)[order]
        self._labels = np.asarray(labels, dtype=np.int64)[order]
        self._iscrowd = np.asarray(crowd, dtype=np.int64)[order]
        self._seg_kinds = np.asarray(kinds, dtype=np.uint8)[order]
        seg_lens = np.array([len(segs[i]) for i in order], dtype=np.int64)
        self._seg_offsets = np.concatenate([[0], np.cumsum(seg_lens)]).astype(np.int64)
        self._seg_buffer = np.frombuffer(b"".join(segs[i] for i in order), dtype=np.uint8)

    def _with_instances(self, images: list[dict], annotations: list[dict]) -> list[dict]:
        """The images with at least one non-crowd annotation of positive size; the others are counted."""
        with_instances = {
            a.get("image_id")
            for a in annotations
            if not a.get("iscrowd", 0) and len(a.get("bbox", ())) == 4 and a["bbox"][2] > 0 and a["bbox"][3] > 0
        }
        kept = [im for im in images if im["id"] in with_instances]
        self._empty_image_ids = {im["id"] for im in images} - with_instances
        if self._empty_image_ids:
            warnings.warn(
                f"{self.annotation_file}: left out {len(self._empty_image_ids)} of {len(images)} images without "
                "annotations (filter_empty)",
                stacklevel=4,
            )
        return kept

    @property
    def num_classes(self) -> int:
        """K, the number of foreground classes."""
        return len(self.category_names)

    def __len__(self) -> int:
        return len(self.image_ids)

    def group_ids(self) -> np.ndarray:
        """Int64[N] aspect-ratio group per image from the JSON sizes: 0 if w >= h, 1 if w < h."""
        return (self.widths < self.heights).astype(np.int64)

    def _segmentation(self, a: int) -> object:
        return pickle.loads(self._seg_buffer[self._seg_offsets[a] : self._seg_offsets[a + 1]].tobytes())

    def _masks(self, annotations: np.ndarray, h: int, w: int) -> np.ndarray:
        """UInt8[M, H, W] for the M annotations (indices into the sorted arrays), decoded in one pycocotools call."""
        rles = []
        for a in annotations:
            kind, seg = self._seg_kinds[a], self._segmentation(a)
            if kind == _POLYGONS:
                rles.append(mask_utils.merge(mask_utils.frPyObjects(seg, h, w)))
            elif kind == _RLE:
                if tuple(seg["size"]) != (h, w):
                    raise BadDataError(
                        f"{self.annotation_file}: annotation id {self._ann_ids[a]}: RLE size "
                        f"{seg['size']} != image size {[h, w]}"
                    )
                if isinstance(seg["counts"], list):  # uncompressed RLE
                    rles.append(mask_utils.frPyObjects(seg, h, w))
                else:
                    counts = seg["counts"]
                    rles.append(
                        {
                            "size": seg["size"],
                            "counts": counts.encode() if isinstance(counts, str) else counts,
                        }
                    )
            else:  # no segmentation: fall back to the box
                x0, y0, x1, y1 = self._boxes[a]
                rles.append(mask_utils.frPyObjects([[x0, y0, x1 - x0, y1 - y0]], h, w)[0])
        if not rles:
            return np.zeros((0, h, w), dtype=np.uint8)
        return np.ascontiguousarray(mask_utils.decode(rles).transpose(2, 0, 1))

    def _read_image(self, i: int) -> torch.Tensor | None:
        """Float[3, H, W] in [0, 1], or None if unreadable and on_bad_image == "skip"."""
        path = self.images_dir / str(self.file_names[i])
        try:
            with Image.open(path) as im:
                arr = np.asarray(im.convert("RGB"))
        except (OSError, SyntaxError) as e:  # missing file, truncated or corrupt bytes
            msg = f"{path}: cannot read image id {self.image_ids[i]} ({type(e).__name__}: {e})"
            if self.on_bad_image == "error":
                raise BadDataError(msg) from e
            warnings.warn(f"skipping bad image: {msg}", stacklevel=3)
            return None
        if arr.shape[:2] != (self.heights[i], self.widths[i]):
            raise BadDataError(
                f"{path}: image id {self.image_ids[i]} is {arr.shape[1]}x{arr.shape[0]} (WxH), "
                f"annotation file {self.annotation_file} says {self.widths[i]}x{self.heights[i]}"
            )
        return torch.from_numpy(arr.copy()).permute(2, 0, 1).float().div_(255.0)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, dict]:
        skipped: list[int] = []
        for attempt in range(len(self)):
            k = (i + attempt) % len(self)
            image = self._read_image(k)
            if image is not None:
                break
            skipped.append(int(self.image_ids[k]))
        else:
            raise BadDataError(f"{self.images_dir}: no readable image in the dataset")
        h, w = image.shape[-2:]
        lo, hi = self._ann_offsets[k], self._ann_offsets[k + 1]
        crowd = self._iscrowd[lo:hi].astype(bool)
        instances = np.arange(lo, hi)[~crowd]
        target = {
            "boxes": torch.from_numpy(self._boxes[instances]),
            "labels": torch.from_numpy(self._labels[instances]),
            "masks": torch.from_numpy(self._masks(instances, h, w)),
            "crowd_boxes": torch.from_numpy(self._boxes[lo:hi][crowd]),
            "image_id": int(self.image_ids[k]),
        }
        if skipped:
            target["skipped_image_ids"] = skipped
        return image, target
