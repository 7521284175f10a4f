"""COCO evaluation: results conversion, pycocotools scoring, faster-coco-eval parity, DDP de-duplication."""

import json

import numpy as np
import pytest
import torch
from pycocotools import mask as mask_utils

from maskrcnn.coco_eval import CocoEvaluator, detections_to_coco, gather_and_dedupe
from maskrcnn.data.coco import CocoInstances
from maskrcnn.data.shapes import ensure_shapes_dataset


@pytest.fixture(scope="module")
def val_set(tmp_path_factory):
    root = ensure_shapes_dataset(
        tmp_path_factory.mktemp("shapes") / "s",
        num_train=1,
        num_val=10,
        image_size=96,
        max_size=48,
        workers=1,
    )
    return CocoInstances(root / "val", root / "annotations" / "instances_val.json")


def _gt_as_detections(dataset, jitter=0.0):
    """Each image's ground truth as a torchvision-style prediction (score 1, mask probabilities)."""
    bbox, segm = [], []
    for i in range(len(dataset)):
        _, t = dataset[i]
        boxes = t["boxes"] + jitter
        det = {
            "boxes": boxes,
            "scores": torch.ones(len(boxes)),
            "labels": t["labels"],
            "masks": t["masks"][:, None].float(),
        }
        b, s = detections_to_coco(t["image_id"], det, dataset.contiguous_to_category_id)
        bbox += b
        segm += s
    return bbox, segm


def test_ground_truth_as_predictions_scores_ap_one(val_set):
    metrics = CocoEvaluator(val_set.annotation_file).evaluate(*_gt_as_detections(val_set))
    assert metrics["bbox/AP"] == pytest.approx(1.0)
    assert metrics["segm/AP"] == pytest.approx(1.0)
    assert set(metrics) == {
        f"{k}/{m}" for k in ("bbox", "segm") for m in ("AP", "AP50", "AP75", "APs", "APm", "APl")
    }


def test_shifted_predictions_score_lower(val_set):
    metrics = CocoEvaluator(val_set.annotation_file).evaluate(*_gt_as_detections(val_set, jitter=3.0))
    assert metrics["bbox/AP"] < 0.9


def test_no_detections_gives_zero_and_a_warning(val_set):
    with pytest.warns(UserWarning, match="no bbox detections"):
        metrics = CocoEvaluator(val_set.annotation_file).evaluate([], [])
    assert metrics["bbox/AP"] == 0.0 and metrics["segm/AP"] == 0.0


def test_results_use_original_category_ids_and_one_rle_per_detection():
    det = {
        "boxes": torch.tensor([[1.0, 2.0, 5.0, 8.0], [0.0, 0.0, 3.0, 3.0]]),
        "scores": torch.tensor([0.9, 0.4]),
        "labels": torch.tensor([2, 1]),
        "masks": torch.zeros(2, 1, 10, 12),
    }
    det["masks"][0, 0, 2:8, 1:5] = 0.8
    bbox, segm = detections_to_coco(7, det, {1: 17, 2: 90})
    assert [r["category_id"] for r in bbox] == [90, 17]
    assert bbox[0]["bbox"] == [1.0, 2.0, 4.0, 6.0] and bbox[0]["image_id"] == 7
    decoded = mask_utils.decode(
        {"size": segm[0]["segmentation"]["size"], "counts": segm[0]["segmentation"]["counts"].encode()}
    )
    assert decoded.shape == (10, 12) and int(decoded.sum()) == 24
    json.dumps(segm)  # JSON-serialisable as written to segm_results.json


@pytest.mark.parametrize("num", [1, 7])
def test_rles_are_the_thresholded_masks(num):
    """The RLEs (thresholded straight into pycocotools' Fortran layout) decode to masks >= threshold exactly, and
    equal pycocotools' encoding of the uint8 masks; H != W, so a transposition would show."""
    gen = torch.Generator().manual_seed(num)
    probabilities = torch.rand(num, 1, 13, 21, generator=gen)
    probabilities[0, 0, 0, 0] = 0.5  # on the threshold: in the mask
    det = {"boxes": torch.zeros(num, 4), "scores": torch.ones(num), "labels": torch.ones(num, dtype=torch.int64),
           "masks": probabilities}  # fmt: skip
    _, segm = detections_to_coco(1, det, {1: 1})
    expected = (probabilities[:, 0] >= 0.5).numpy().astype(np.uint8)
    reference = mask_utils.encode(np.asfortranarray(expected.transpose(1, 2, 0)))
    for k, record in enumerate(segm):
        rle = {"size": record["segmentation"]["size"], "counts": record["segmentation"]["counts"].encode()}
        assert rle["size"] == [13, 21]
        assert np.array_equal(mask_utils.decode(rle), expected[k])
        assert rle["counts"] == reference[k]["counts"]


def test_faster_coco_eval_matches_pycocotools(val_set):
    pytest.importorskip("faster_coco_eval")
    results = _gt_as_detections(val_set, jitter=1.5)
    rng = np.random.default_rng(0)
    for r in results[0] + results[1]:
        r["score"] = float(rng.uniform(0.1, 1.0))
    ref = CocoEvaluator(val_set.annotation_file, "pycocotools").evaluate(*results)
    fast = CocoEvaluator(val_set.annotation_file, "faster_coco_eval").evaluate(*results)
    for key, value in ref.items():
        assert fast[key] == pytest.approx(value, abs=1e-4), key


def test_unknown_backend_is_refused(val_set):
    with pytest.raises(ValueError, match="eval.backend='coco2'"):
        CocoEvaluator(val_set.annotation_file, "coco2")


def test_dedupe_keeps_one_record_per_image():
    records = [{"image_id": 3, "r": "a"}, {"image_id": 1, "r": "b"}, {"image_id": 3, "r": "c"}]
    assert gather_and_dedupe(records) == [{"image_id": 1, "r": "b"}, {"image_id": 3, "r": "a"}]


@pytest.mark.slow
def test_faster_coco_eval_matches_pycocotools_on_1000_images(tmp_path):
    pytest.importorskip("faster_coco_eval")
    from bench.coco_eval import synthetic_coco, time_backends

    gt, bbox, segm = synthetic_coco(1000)  # 5000 (COCO val's size) took 49 s and tested nothing more
    gt_file = tmp_path / "instances.json"
    gt_file.write_text(json.dumps(gt))
    report = time_backends(gt_file, bbox, segm, repeat=1)
    ref, fast = report["pycocotools"]["metrics"], report["faster_coco_eval"]["metrics"]
    assert 0.05 < ref["segm/AP"] < 0.95, "a results file that exercises the matching, not a trivial one"
    for key, value in ref.items():
        assert fast[key] == pytest.approx(value, abs=1e-4), key


def _scored_predictions(val_set, seed=0):
    """Shifted ground truth with random scores and every label remapped at random: AP strictly between 0 and 1."""
    bbox, segm = _gt_as_detections(val_set, jitter=1.5)
    rng = np.random.default_rng(seed)
    ids = sorted(val_set.contiguous_to_category_id.values())
    for b, s in zip(bbox, segm, strict=True):
        b["score"] = s["score"] = float(rng.uniform(0.1, 1.0))
        if rng.uniform() < 0.3:
            b["category_id"] = s["category_id"] = int(rng.choice(ids))
    return bbox, segm


def _pycocotools_one_class(gt_file, results, kind, category_id):
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    gt = COCO(str(gt_file))
    coco_eval = COCOeval(gt, gt.loadRes([dict(r) for r in results]), kind)
    coco_eval.params.catIds = [category_id]
    coco_eval.evaluate()
    coco_eval.accumulate()
    coco_eval.summarize()
    return coco_eval.stats[:3]


def test_per_class_ap_equals_pycocotools_run_on_each_class_alone(val_set):
    bbox, segm = _scored_predictions(val_set)
    scores = CocoEvaluator(val_set.annotation_file).score(bbox, segm)
    for kind, results in (("bbox", bbox), ("segm", segm)):
        rows = scores.per_class[kind]
        assert len(rows) >= 4, "the shapes val set has most classes"
        assert any(0.05 < row["AP"] < 0.95 for row in rows), "a non-trivial result"
        for row in rows:
            ap, ap50, ap75 = _pycocotools_one_class(val_set.annotation_file, results, kind, row["id"])
            assert (row["AP"], row["AP50"], row["AP75"]) == pytest.approx((ap, ap50, ap75), abs=1e-12), row
            assert row["name"] == val_set.category_names[val_set.category_id_to_contiguous[row["id"]] - 1]


def test_pr_curves_come_from_the_same_accumulated_precision(val_set):
    bbox, segm = _scored_predictions(val_set, seed=1)
    scores = CocoEvaluator(val_set.annotation_file).score(bbox, segm)
    for kind in ("bbox", "segm"):
        at50, at75 = scores.pr_curves[kind]
        assert (at50.iou, at75.iou) == (0.5, 0.75) and len(at50.recall) == len(at50.precision) == 101
        # COCO's AP50 / AP75 are these curves' means (every category has ground truth here).
        assert np.mean(at50.precision) == pytest.approx(scores.metrics[f"{kind}/AP50"], abs=1e-12)
        assert np.mean(at75.precision) == pytest.approx(scores.metrics[f"{kind}/AP75"], abs=1e-12)
        assert all(a >= b for a, b in zip(at50.precision, at50.precision[1:], strict=False)), "interpolated"
        assert at50.num_gt == sum(len(val_set[i][1]["boxes"]) for i in range(len(val_set)))
