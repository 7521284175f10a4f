"""torchvision's Mask R-CNN weights, converted and scored by our evaluator, against pycocotools on torchvision.

A random torchvision `maskrcnn_resnet50_fpn` (91 labels, COCO's id space) is saved as a state_dict file and
converted with `python -m maskrcnn.torchvision_weights`; `evaluate.py` scores the checkpoint on a tiny
COCO-format set whose category ids are not contiguous. The reference: torchvision's own predictions on the
same images, written with category_id = label as torchvision's reference scripts do, scored by pycocotools.
The ground truth is made from a subset of those predictions, so the AP is neither 0 nor 1.
"""

import json

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from torchvision_reference import random_torchvision_maskrcnn

from maskrcnn.evaluate_checkpoint import evaluate
from maskrcnn.torchvision_weights import coco_classes, convert

SIZE = 224
PROPOSALS, DETECTIONS = 300, 30  # fewer than the defaults (1000, 100): cheaper heads on the CPU
SHAPES = [(200, 240), (180, 256), (200, 240)]  # (h, w); two alike, so one val batch holds two images


@pytest.fixture(scope="module")
def torchvision_setup(tmp_path_factory):
    """-> (weights file, COCO root, torchvision's predictions on the val images)."""
    root = tmp_path_factory.mktemp("tv_weights")
    model = random_torchvision_maskrcnn(SIZE, SIZE, PROPOSALS, DETECTIONS)
    weights = root / "maskrcnn_resnet50_fpn_random.pth"
    torch.save(model.state_dict(), weights)

    (root / "val2017").mkdir()
    rng = np.random.default_rng(0)
    images, file_images = [], []
    for i, (h, w) in enumerate(SHAPES):
        name = f"{i:012d}.png"
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(root / "val2017" / name)
        file_images.append({"id": 10 + i, "file_name": name, "height": h, "width": w})
        images.append(torch.from_numpy(np.array(Image.open(root / "val2017" / name))).permute(2, 0, 1) / 255)
    with torch.no_grad():  # one image at a time, as torchvision's reference evaluates (a batch pads images)
        predictions = [model([image])[0] for image in images]

    annotations = []
    for image, det in zip(file_images, predictions, strict=True):
        for k in range(0, 12, 3):  # every third of the top 12 detections becomes a ground-truth instance
            x1, y1, x2, y2 = det["boxes"][k].tolist()
            rle = _rle(det["masks"][k, 0] >= 0.5)
            annotations.append({
                "id": len(annotations) + 1, "image_id": image["id"], "category_id": int(det["labels"][k]),
                "bbox": [x1, y1, x2 - x1, y2 - y1], "area": float(mask_utils.area(rle)), "iscrowd": 0,
                "segmentation": rle,
            })  # fmt: skip
    used = {a["category_id"] for a in annotations} | {1, 90}  # 1 and 90: categories without ground truth
    categories = [c for c in coco_classes(91) if c["id"] in used]
    assert [c["id"] for c in categories] != list(range(1, len(categories) + 1)), "ids must not be contiguous"
    (root / "annotations").mkdir()
    gt = {"images": file_images, "annotations": annotations, "categories": categories}
    (root / "annotations" / "instances_val2017.json").write_text(json.dumps(gt))
    return weights, root, [(image["id"], det) for image, det in zip(file_images, predictions, strict=True)]


def _rle(mask: torch.Tensor) -> dict:
    rle = mask_utils.encode(np.asfortranarray(mask.numpy().astype(np.uint8)))
    return {"size": list(rle["size"]), "counts": rle["counts"].decode("ascii")}


def _pycocotools_ap(gt_file, predictions) -> dict[str, float]:
    """torchvision's predictions, category_id = label, scored by plain pycocotools."""
    results = {"bbox": [], "segm": []}
    for image_id, det in predictions:
        for box, score, label, mask in zip(det["boxes"], det["scores"], det["labels"], det["masks"], strict=True):
            x1, y1, x2, y2 = box.tolist()
            common = {"image_id": image_id, "category_id": int(label), "score": float(score)}
            results["bbox"].append({**common, "bbox": [x1, y1, x2 - x1, y2 - y1]})
            results["segm"].append({**common, "segmentation": _rle(mask[0] >= 0.5)})
    gt = COCO(str(gt_file))
    ap = {}
    for kind, dets in results.items():
        coco_eval = COCOeval(gt, gt.loadRes(dets), kind)
        coco_eval.evaluate()
        coco_eval.accumulate()
        coco_eval.summarize()
        ap[f"{kind}/AP"] = float(coco_eval.stats[0])
    return ap


@pytest.mark.parametrize("impl", ["torchvision", "ours"])
def test_converted_weights_score_as_pycocotools_scores_torchvision(compose_cfg, torchvision_setup, tmp_path, impl):
    weights, root, predictions = torchvision_setup
    gt_file = root / "annotations" / "instances_val2017.json"
    expected = _pycocotools_ap(gt_file, predictions)
    assert all(0 < v < 1 for v in expected.values()), expected

    sizes = [
        f"model.rpn.pre_nms_top_n_test={PROPOSALS}",
        f"model.rpn.post_nms_top_n_test={PROPOSALS}",
        f"model.roi_heads.detections_per_img={DETECTIONS}",
    ]
    roi = "align_legacy" if impl == "ours" else "align_legacy-torchvision"
    ckpt = convert(weights, tmp_path / "converted.ckpt", roi=roi, min_size=SIZE, max_size=SIZE, overrides=sizes)
    cfg = compose_cfg(
        "evaluate",
        [
            f"ckpt_path={ckpt}",
            "data=coco",
            f"data.root={root}",
            f"data.image_min_size={SIZE}",
            f"data.image_max_size={SIZE}",
            "data.module.num_workers=0",
            f"paths.output_dir={tmp_path / 'eval'}",
        ],
    )
    metrics = evaluate(cfg)
    written = json.loads((tmp_path / "eval" / "bbox_results.json").read_text())
    assert {r["category_id"] for r in written} == {int(c) for _, d in predictions for c in d["labels"]}
    for key, value in expected.items():
        if impl == "torchvision":  # bitwise the same detections, so exactly the same AP
            assert metrics[key] == value, key
        else:  # our RoIAlign rounds differently in float32
            assert metrics[key] == pytest.approx(value, abs=2e-3), key
