"""COCO evaluation: detections -> COCO results (batched RLE), pycocotools / faster-coco-eval scoring."""

from __future__ import annotations

import contextlib
import io
import json
import warnings
from collections.abc import Iterable
from dataclasses import dataclass, field
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
    masks = detections["masks"][:, 0]
    # pycocotools reads one Fortran-ordered H x W x D uint8 array, i.e. [D, W, H] row-major: threshold straight
    # into that layout, one pass over the probabilities, and hand numpy a view (no uint8 cast, no Fortran copy).
    binary = torch.empty((len(masks), masks.shape[2], masks.shape[1]), dtype=torch.bool, device=masks.device)
    torch.ge(masks.transpose(1, 2), mask_threshold, out=binary)
    rles = mask_utils.encode(binary.cpu().view(torch.uint8).numpy().transpose(2, 1, 0))
    segm = [
        {"image_id": image_id, "category_id": c, "segmentation": _json_rle(r), "score": s}
        for c, r, s in zip(categories, rles, scores, strict=True)
    ]
    return bbox, segm


def _json_rle(rle: dict) -> dict:
    return {"size": list(rle["size"]), "counts": rle["counts"].decode("ascii")}


@dataclass
class PRCurve:
    """COCOeval's interpolated precision at recall = 0, 0.01, ..., 1, averaged over the categories with ground
    truth (as AP averages it), at one IoU threshold, all areas, 100 detections per image. Precision 0 at a
    recall no detection reaches. num_gt: the non-crowd ground-truth instances of those categories."""

    iou: float
    recall: list[float]
    precision: list[float]
    num_gt: int


@dataclass
class CocoScores:
    """metrics: flat bbox/AP ... segm/APl (COCOeval's stats[:6]; -1 for a size range without ground truth).
    per_class: by "bbox" / "segm", one {"id", "name", "AP", "AP50", "AP75"} per category with ground truth,
    from COCOeval's precision array (AP in [0, 1]). pr_curves: by "bbox" / "segm", at IoU 0.5 and 0.75."""

    metrics: dict[str, float] = field(default_factory=dict)
    per_class: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    pr_curves: dict[str, list[PRCurve]] = field(default_factory=dict)


class CocoEvaluator:
    """Scores COCO results against a ground-truth instances JSON (loaded once)."""

    PR_IOUS = (0.5, 0.75)

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
        """The flat metrics only (see `score`)."""
        return self.score(bbox_results, segm_results, image_ids).metrics

    def score(
        self, bbox_results: list[dict], segm_results: list[dict], image_ids: Iterable[int] | None = None
    ) -> CocoScores:
        """The metrics, per-class AP and PR curves of one evaluation per kind. image_ids: the images scored
        (default: all of the ground truth)."""
        scores = CocoScores()
        for kind, results in (("bbox", bbox_results), ("segm", segm_results)):
            if not results:
                warnings.warn(f"no {kind} detections at all: {kind} AP is 0", stacklevel=2)
                scores.metrics.update({f"{kind}/{name}": 0.0 for name in METRIC_NAMES})
                continue
            coco_eval = self._run(kind, results, image_ids)
            stats = coco_eval.stats[: len(METRIC_NAMES)]
            scores.metrics.update({f"{kind}/{name}": float(v) for name, v in zip(METRIC_NAMES, stats, strict=True)})
            scores.per_class[kind] = self._per_class(coco_eval)
            scores.pr_curves[kind] = [self._pr_curve(coco_eval, iou) for iou in self.PR_IOUS]
        return scores

    def _run(self, kind: str, results: list[dict], image_ids: Iterable[int] | None) -> Any:
        with contextlib.redirect_stdout(io.StringIO()):
            dt = self.gt.loadRes([dict(r) for r in results])  # loadRes adds keys to the dicts it gets
            coco_eval = self._cocoeval(self.gt, dt, kind)
            if image_ids is not None:
                coco_eval.params.imgIds = sorted(set(int(i) for i in image_ids))
            coco_eval.evaluate()
            coco_eval.accumulate()
            coco_eval.summarize()
        return coco_eval

    def _per_class(self, coco_eval: Any) -> list[dict[str, Any]]:
        """Per category, the mean of its precision entries (-1: no ground truth) as COCOeval's summary takes
        them (all areas, 100 detections), over every IoU, at 0.5 and at 0.75 (detectron2 does the same)."""
        precision = np.asarray(coco_eval.eval["precision"])[:, :, :, 0, -1]  # [T, R, K]
        ious = np.asarray(coco_eval.params.iouThrs)
        columns = (("AP", slice(None)), ("AP50", np.isclose(ious, 0.5)), ("AP75", np.isclose(ious, 0.75)))
        rows = []
        for k, category_id in enumerate(coco_eval.params.catIds):
            row = {"id": int(category_id), "name": self.gt.cats[category_id]["name"]}
            for name, selected in columns:
                values = precision[selected, :, k]
                row[name] = float(values[values > -1].mean()) if (values > -1).any() else float("nan")
            if not np.isnan(row["AP"]):
                rows.append(row)
        return rows

    def _pr_curve(self, coco_eval: Any, iou: float) -> PRCurve:
        ious = np.asarray(coco_eval.params.iouThrs)
        precision = np.asarray(coco_eval.eval["precision"])[np.isclose(ious, iou).argmax(), :, :, 0, -1]  # [R, K]
        with_gt = (precision > -1).any(axis=0)
        mean = precision[:, with_gt].mean(axis=1) if with_gt.any() else np.zeros(len(precision))
        categories = [c for c, keep in zip(coco_eval.params.catIds, with_gt, strict=True) if keep]
        num_gt = len(self.gt.getAnnIds(imgIds=coco_eval.params.imgIds, catIds=categories, iscrowd=False))
        return PRCurve(iou, [float(r) for r in coco_eval.params.recThrs], mean.tolist(), num_gt)


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
