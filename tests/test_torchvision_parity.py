"""Inference parity with torchvision's Mask R-CNN, stage by stage, through our weights converter.

torchvision's `maskrcnn_resnet50_fpn` (random weights) and our `model=r50_fpn` with its state_dict converted
by `maskrcnn.torchvision_weights`. With `roi=align_legacy-torchvision` (torchvision's own RoIAlign,
aligned=False) every stage is bitwise identical but two, which agree to float32 rounding: the mask predictor (our
transposed conv is a 1x1 conv) and the pasted masks (our paste rounds its products apart; every mask lands
on torchvision's pixels). With our op the pooled features agree to float32 rounding too.
Each stage is fed torchvision's output of the stage before, so a failure names the stage that diverges.
The class scores are spread first (random weights give near-uniform scores), so NMS ties decide nothing.
"""

import pytest
import torch
from torchvision.models.detection.roi_heads import maskrcnn_inference, paste_masks_in_image
from torchvision.models.detection.transform import resize_boxes
from torchvision_reference import random_torchvision_maskrcnn

from maskrcnn.builders import build_model
from maskrcnn.paste import paste_masks
from maskrcnn.torchvision_weights import rename_torchvision_keys
from roi_heads.postprocess import detect_boxes, mask_probabilities

MIN_SIZE, MAX_SIZE = 224, 320
# Fewer proposals and detections per image than the defaults (1000, 100) keep the heads cheap on the CPU.
PROPOSALS, DETECTIONS = 300, 25


@pytest.fixture(scope="module")
def torchvision_model():
    return random_torchvision_maskrcnn(MIN_SIZE, MAX_SIZE, PROPOSALS, DETECTIONS)


@pytest.fixture(scope="module")
def images():
    g = torch.Generator().manual_seed(0)
    return [torch.rand(3, 200, 240, generator=g), torch.rand(3, 180, 256, generator=g)]


@pytest.fixture(scope="module")
def expected(torchvision_model, images):
    with torch.no_grad():
        return torchvision_model(images)


def _ours(compose_cfg, torchvision_model, impl: str):
    cfg = compose_cfg(
        "train",
        [
            "model=r50_fpn",
            "roi=align_legacy" if impl == "ours" else "roi=align_legacy-torchvision",
            f"model.rpn.pre_nms_top_n_test={PROPOSALS}",
            f"model.rpn.post_nms_top_n_test={PROPOSALS}",
            f"model.roi_heads.detections_per_img={DETECTIONS}",
        ],
    )
    model = build_model(cfg.model, cfg.roi, 90, MIN_SIZE, MAX_SIZE).eval()
    model.load_state_dict(rename_torchvision_keys(torchvision_model.state_dict()), strict=True)
    return model


def _check(stage: str, ours, theirs, exact: bool) -> None:
    if isinstance(theirs, (list, tuple)):
        assert len(ours) == len(theirs), f"{stage}: {len(ours)} vs {len(theirs)} items"
        for i, (a, b) in enumerate(zip(ours, theirs, strict=True)):
            _check(f"{stage}[{i}]", a, b, exact)
        return
    assert ours.shape == theirs.shape and ours.dtype == theirs.dtype, f"{stage}: {ours.shape} vs {theirs.shape}"
    if exact or not theirs.is_floating_point():
        assert torch.equal(ours, theirs), f"{stage}: differs from torchvision"
    else:
        torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-5, msg=lambda m: f"{stage}: {m}")


@pytest.mark.parametrize("impl", ["torchvision", "ours"])
def test_stages_match_torchvision(compose_cfg, torchvision_model, images, impl):
    tv, ours = torchvision_model, _ours(compose_cfg, torchvision_model, impl)
    tv_heads, our_heads = tv.roi_heads, ours.roi_heads
    with torch.no_grad():
        batch, _ = tv.transform(images)
        our_batch, _ = ours.transform(images)
        _check("transform", our_batch.tensors, batch.tensors, exact=True)
        assert our_batch.image_sizes == batch.image_sizes

        features = tv.backbone(batch.tensors)
        _check("backbone+fpn", list(ours.backbone(batch.tensors).values()), list(features.values()), exact=True)

        proposals, _ = tv.rpn(batch, features)
        _check("rpn proposals", ours.rpn(batch, features)[0], proposals, exact=True)

        sizes = batch.image_sizes
        pooled = tv_heads.box_roi_pool(features, proposals, sizes)
        _check("box RoI pooling", our_heads.box_extractor(features, proposals), pooled, exact=impl == "torchvision")

        logits, deltas = tv_heads.box_predictor(tv_heads.box_head(pooled))
        _check("box head", our_heads.box_predictor(our_heads.box_head(pooled)), (logits, deltas), exact=True)

        boxes, scores, labels = tv_heads.postprocess_detections(logits, deltas, proposals, sizes)
        ours_detected = detect_boxes(
            logits, deltas, proposals, sizes, our_heads.box_coder,
            our_heads.score_thresh, our_heads.nms_thresh, our_heads.detections_per_img, our_heads.min_box_size,
        )  # fmt: skip
        for key, theirs in (("boxes", boxes), ("scores", scores), ("labels", labels)):
            _check(f"detections {key}", [d[key] for d in ours_detected], theirs, exact=True)
        assert len(torch.cat(scores).unique()) == len(torch.cat(scores)) == 2 * DETECTIONS, "spread scores, no ties"

        mask_pooled = tv_heads.mask_roi_pool(features, boxes, sizes)
        _check("mask RoI pooling", our_heads.mask_extractor(features, boxes), mask_pooled, exact=impl == "torchvision")

        mask_features = tv_heads.mask_head(mask_pooled)
        _check("mask head", our_heads.mask_head(mask_pooled), mask_features, exact=True)
        # Our predictor computes the transposed conv as a 1x1 conv to 4x the channels (issue #26): the same
        # function, its sums of 256 products taken in another order, so float32 rounding apart (relative to the
        # size of the logits: random weights give |logits| up to ~60).
        mask_logits = tv_heads.mask_predictor(mask_features)
        ours = our_heads.mask_predictor(mask_features)
        scale = mask_logits.abs().max().item()
        torch.testing.assert_close(ours, mask_logits, rtol=0, atol=1e-5 * scale, msg=lambda m: f"mask predictor: {m}")
        probabilities = maskrcnn_inference(mask_logits, labels)
        _check(
            "mask probabilities",
            list(mask_probabilities(mask_logits, torch.cat(labels)).split([len(b) for b in boxes])),
            probabilities,
            exact=True,
        )
        # Our paste (issue #26) lands every mask on torchvision's pixels; the values agree to float32 rounding.
        original_sizes = [img.shape[-2:] for img in images]
        for i, (size, original) in enumerate(zip(sizes, original_sizes, strict=True)):
            image_boxes = resize_boxes(boxes[i], size, original)
            theirs = paste_masks_in_image(probabilities[i], image_boxes, original)
            ours = paste_masks(probabilities[i], image_boxes, original)
            torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-6, msg=lambda m: f"pasted masks: {m}")
            assert torch.equal(ours != 0, theirs != 0), "pasted masks: not on torchvision's pixels"


@pytest.mark.parametrize("impl", ["torchvision", "ours"])
def test_detections_match_torchvision_end_to_end(compose_cfg, torchvision_model, images, expected, impl):
    ours = _ours(compose_cfg, torchvision_model, impl)
    with torch.no_grad():
        got = ours(images)
    for theirs, mine in zip(expected, got, strict=True):
        assert len(theirs["boxes"]) == DETECTIONS
        if impl == "torchvision":
            for key in ("boxes", "scores", "labels"):
                assert torch.equal(mine[key], theirs[key]), key
            # The mask predictor's products and our paste round differently from torchvision's (see above).
            torch.testing.assert_close(mine["masks"], theirs["masks"], rtol=0, atol=1e-4)
            assert ((mine["masks"] >= 0.5) != (theirs["masks"] >= 0.5)).float().mean() <= 1e-5
            continue
        # Our RoIAlign rounds differently in float32: the same detections, boxes to ~1e-4 px.
        assert torch.equal(mine["labels"], theirs["labels"])
        torch.testing.assert_close(mine["boxes"], theirs["boxes"], rtol=0, atol=1e-3)
        torch.testing.assert_close(mine["scores"], theirs["scores"], rtol=0, atol=1e-5)
        differing = ((mine["masks"] >= 0.5) != (theirs["masks"] >= 0.5)).float().mean()
        assert differing <= 1e-4, f"{differing:.2e} of the pasted mask pixels differ"
