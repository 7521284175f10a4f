"""COCO evaluation: detections -> COCO results (batched RLE), pycocotools / faster-coco-eval scoring."""

from __future__ import annotations

import contextlib
import io
import json
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pycocotools import mask as mask_utils
from torch import Tensor

from maskrcnn.distributed import all_gather_objects

METRIC_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl")  # the first six entries of COCOeval.stats
BACKENDS = ("pycocotools", "faster_coco_eval")


def detections_to_coco(
    image_id: int,
    detections: dict[str, Tensor],
    contiguous_to_category_id: dict[int, int],
    mask_threshold: float = 0.5,
) -> tuple[list[dict], list[dict]]:
    """One image's detections -> (bbox results, segm results) in the COCO results format.

    detections: boxes [D, 4] xyxy, scores [D], labels Int64[D] (contiguous), masks [D, 1, H, W] probabilities.
    All masks of the image are RLE-encoded in a single pycocotools call.
    """
    boxes = detections["boxes"].detach().float().cpu().numpy()
    scores = detections["scores"].detach().float().cpu().tolist()
    categories = [contiguous_to_category_id[int(c)] for c in detections["labels"].tolist()]
    xywh = np.concatenate([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], axis=1).tolist()
    bbox = [
        {"image_id": image_id, "category_id": c, "bbox": b, "score": s}
        for c, b, s in zip(categories, xywh, scores, strict=True)
    ]
    if "masks" not in detections or len(scores) == 0:
        return bbox, []
    binary = (detections["masks"][:, 0] >= mask_threshold).to(torch.uint8).cpu().numpy()
    rles = mask_utils.encode(np.asfortranarray(binary.transpose(1, 2, 0)))
    segm = [
        {"image_id": image_id, "category_id": c, "segmentation": _json_rle(r), "score": s}
        for c, r, s in zip(categories, rles, scores, strict=True)
    ]
    return bbox, segm


def _json_rle(rle: dict) -> dict:
    return {"size": list(rle["size"]), "counts": rle["counts"].decode("ascii")}


class CocoEvaluator:
    """Scores COCO results against a ground-truth instances JSON.

    `evaluate` returns flat keys bbox/AP ... bbox/APl and segm/AP ... segm/APl, as COCOeval's stats[:6]
    (AP in [0, 1]; COCOeval reports -1 for a size range without ground truth, and that is kept).
    """

    def __init__(self, gt_annotation_file: str | Path, backend: str = "pycocotools") -> None:
        if backend not in BACKENDS:
            raise ValueError(f"eval.backend={backend!r} is not one of {', '.join(BACKENDS)}")
        self.gt_annotation_file, self.backend = Path(gt_annotation_file), backend
        self._coco, self._cocoeval = _backend(backend)
        with contextlib.redirect_stdout(io.StringIO()):
            self.gt = self._coco(str(self.gt_annotation_file))

    def evaluate(
        self, bbox_results: list[dict], segm_results: list[dict], image_ids: Iterable[int] | None = None
    ) -> dict[str, float]:
        metrics: dict[str, float] = {}
        for kind, results in (("bbox", bbox_results), ("segm", segm_results)):
            stats = self._stats(kind, results, image_ids)
            metrics.update({f"{kind}/{name}": float(v) for name, v in zip(METRIC_NAMES, stats, strict=False)})
        return metrics

    def _stats(self, kind: str, results: list[dict], image_ids: Iterable[int] | None) -> list[float]:
        if not results:
            warnings.warn(f"no {kind} detections at all: {kind} AP is 0", stacklevel=3)
            return [0.0] * len(METRIC_NAMES)
        with contextlib.redirect_stdout(io.StringIO()):
            dt = self.gt.loadRes([dict(r) for r in results])  # loadRes adds keys to the dicts it gets
            coco_eval = self._cocoeval(self.gt, dt, kind)
            if image_ids is not None:
                coco_eval.params.imgIds = sorted(set(int(i) for i in image_ids))
            coco_eval.evaluate()
            coco_eval.accumulate()
            coco_eval.summarize()
        return list(coco_eval.stats[: len(METRIC_NAMES)])


def _backend(name: str) -> tuple[Any, Any]:
    if name == "faster_coco_eval":
        try:
            from faster_coco_eval import COCO, COCOeval_faster
        except ImportError as e:
            raise ImportError("eval.backend=faster_coco_eval needs `pip install faster-coco-eval`") from e
        return COCO, COCOeval_faster
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    return COCO, COCOeval


def gather_and_dedupe(records: list[dict]) -> list[dict]:
    """All ranks' per-image records (each with an `image_id`), one per image: a padded sampler repeats images."""
    records = [r for rank_records in all_gather_objects(records) for r in rank_records]
    unique: dict[int, dict] = {}
    for record in records:
        unique.setdefault(int(record["image_id"]), record)
    return [unique[i] for i in sorted(unique)]


def write_results(path: str | Path, results: list[dict]) -> None:
    Path(path).write_text(json.dumps(results))
