"""Under autocast the convolutions run in bfloat16 but the box geometry stays float32.

torchvision decodes boxes in the dtype of the deltas, so under bfloat16 autocast every coordinate above
512 px would sit on a 4 px grid: proposals, training RoIs and detections quantized as RoIPool quantizes.
These tests run the detector under CPU bfloat16 autocast on ~700 px images and compare the RoIs that reach
the extractor, and the detections, with a float32 decode of the very deltas the heads produced.
"""

import pytest
import torch

from maskrcnn.builders import build_model
from roi_heads.box_coder import Float32BoxCoder
from roi_heads.postprocess import detect_boxes

SIZE = 704


@pytest.fixture
def model(compose_cfg):
    cfg = compose_cfg("train", ["model=r18_fpn", "roi=align"])
    torch.manual_seed(0)
    model = build_model(cfg.model, cfg.roi, 6, SIZE, SIZE).eval()
    # Random weights score every box alike; spread the scores so that detections exist and differ.
    torch.nn.init.normal_(model.roi_heads.box_predictor.cls_score.weight, std=0.5)
    return model


def _images() -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return [torch.rand(3, SIZE, SIZE - 64, generator=g), torch.rand(3, SIZE - 96, SIZE, generator=g)]


def _record(model, monkeypatch) -> dict:
    """Captures the RPN head's outputs, the RoIs given to the box extractor and the box predictor's outputs."""
    seen: dict = {}
    model.rpn.head.register_forward_hook(lambda m, i, out: seen.setdefault("rpn_head", out))
    model.roi_heads.box_predictor.register_forward_hook(lambda m, i, out: seen.setdefault("box_predictor", out))
    op = model.roi_heads.box_extractor.op
    multilevel = op.multilevel

    def recording(features, rois, *args, **kwargs):
        seen.setdefault("rois", rois)
        seen.setdefault("feature_dtype", features[0].dtype)
        return multilevel(features, rois, *args, **kwargs)

    monkeypatch.setattr(op, "multilevel", recording)
    return seen


def test_rois_and_detections_are_the_float32_decode_under_bf16_autocast(model, monkeypatch):
    seen = _record(model, monkeypatch)
    images = _images()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        detections = model(images)
    assert seen["feature_dtype"] == torch.bfloat16, "the backbone should still run in bfloat16"
    assert seen["rois"].dtype == torch.float32

    # Float32 reference: the RPN again, outside autocast, fed the head's own outputs in float32.
    with torch.no_grad():
        batch, _ = model.transform(images)
        features = model.backbone(batch.tensors)
        logits, deltas = seen["rpn_head"]
        monkeypatch.setattr(
            model.rpn.head, "forward", lambda x: ([t.float() for t in logits], [t.float() for t in deltas])
        )
        proposals, _ = model.rpn(batch, features)
    assert seen["rois"][:, 1:].max() > 512, "the test needs coordinates where bfloat16 is coarse"
    torch.testing.assert_close(seen["rois"][:, 1:], torch.cat(proposals), rtol=0, atol=0)

    class_logits, box_regression = (t.float() for t in seen["box_predictor"])
    heads = model.roi_heads
    expected = detect_boxes(
        class_logits, box_regression, proposals, batch.image_sizes, Float32BoxCoder(weights=(10.0, 10.0, 5.0, 5.0)),
        heads.score_thresh, heads.nms_thresh, heads.detections_per_img, heads.min_box_size,
    )
    expected = model.transform.postprocess(expected, batch.image_sizes, [img.shape[-2:] for img in images])
    assert sum(len(d["boxes"]) for d in detections) > 0
    for got, want in zip(detections, expected, strict=True):
        for key in ("boxes", "scores", "masks"):
            assert got[key].dtype == torch.float32, key
        torch.testing.assert_close(got["boxes"], want["boxes"], rtol=0, atol=0)
        torch.testing.assert_close(got["scores"], want["scores"], rtol=0, atol=0)
        assert torch.equal(got["labels"], want["labels"])


def test_training_rois_are_float32_under_bf16_autocast(model, monkeypatch):
    seen = _record(model, monkeypatch)
    images = _images()
    targets = [
        {
            "boxes": torch.tensor([[520.0, 300.0, 690.0, 600.0]]),
            "labels": torch.tensor([1]),
            "masks": torch.zeros(1, *img.shape[-2:], dtype=torch.uint8),
        }
        for img in images
    ]
    for t in targets:
        t["masks"][0, 300:600, 520:690] = 1
    model.train()
    try:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            losses = model(images, targets)
    finally:
        model.eval()
    assert seen["rois"].dtype == torch.float32 and seen["feature_dtype"] == torch.bfloat16
    assert all(torch.isfinite(v) for v in losses.values())
