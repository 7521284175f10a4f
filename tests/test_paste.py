"""maskrcnn.paste against torchvision's `paste_masks_in_image`, the independent reference.

Shapes: D detections, M = 28 the mask side, H x W the image. The masks are smooth random fields (like a mask
head's output, unlike white noise) so that thresholding at 0.5 gives real shapes. Boxes: anywhere in the image,
partly outside it, tiny (< 2 px), on the image border, on integer coordinates, and larger than the image; only
boxes that overlap the image, which torchvision pastes (for some boxes wholly outside it raises).
"""

import pytest
import torch
import torch.nn.functional as F
from torchvision.models.detection.roi_heads import paste_masks_in_image
from torchvision.ops import roi_align

from maskrcnn.paste import paste_masks, paste_masks_in_images

pytestmark = pytest.mark.usefixtures("all_cores")

M = 28
SIZES = [(64, 64), (97, 131), (256, 256), (333, 200)]
# Largest difference to torchvision's value of a pasted pixel: both evaluate the same bilinear formula, but
# torch's compiled kernels fuse some multiply-adds (where depends on the build and the code path) and ours
# round every product (float32: ~2e-7 measured, a few ulp of values <= 1).
ATOL = {torch.float32: 1e-6, torch.float64: 1e-12}


def _masks(gen: torch.Generator, num: int, dtype: torch.dtype) -> torch.Tensor:
    """[D, 1, M, M] probabilities: sigmoid of a 7 x 7 random field, upsampled."""
    field = torch.randn(num, 1, 7, 7, generator=gen, dtype=torch.float64) * 4
    return torch.sigmoid(F.interpolate(field, size=(M, M), mode="bicubic", align_corners=False)).to(dtype)


def _boxes(gen: torch.Generator, num: int, height: int, width: int, dtype: torch.dtype) -> torch.Tensor:
    """[D, 4] boxes of every kind in the module docstring, each overlapping the image."""
    scale = torch.tensor([width, height, width, height], dtype=torch.float64)

    def uniform(*shape):
        return torch.rand(*shape, generator=gen, dtype=torch.float64)

    kinds = []
    centre = uniform(num, 2) * 1.2 - 0.1  # some centres outside the image
    side = uniform(num, 2) ** 2 * 1.3 + 0.002  # up to 1.3x the image
    kinds.append(torch.cat([centre - side / 2, centre + side / 2], 1) * scale)
    tiny = uniform(num, 2) * 2 + 0.01  # px
    corner = uniform(num, 2) * scale[:2]
    kinds.append(torch.cat([corner, corner + tiny], 1))
    border = torch.cat([centre - side / 2, centre + side / 2], 1) * scale  # snapped to an image edge
    edge = torch.randint(0, 4, (num,), generator=gen)
    border[edge == 0, 0] = 0
    border[edge == 1, 1] = 0
    border[edge == 2, 2] = width
    border[edge == 3, 3] = height
    kinds.append(border)
    kinds.append(kinds[0].round())  # integer corners: where truncation and the half-pixel rule meet
    boxes = torch.cat(kinds)
    boxes = torch.cat([torch.minimum(boxes[:, :2], boxes[:, 2:]), torch.maximum(boxes[:, :2], boxes[:, 2:])], 1)
    boxes[:, 2:] = torch.maximum(boxes[:, 2:], boxes[:, :2] + 0.01)  # detections have sides >= 0.01 px
    overlaps = (boxes[:, 0] < width) & (boxes[:, 2] > 0) & (boxes[:, 1] < height) & (boxes[:, 3] > 0)
    return boxes[overlaps].to(dtype)


def _iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Bool[D, H, W] x 2 -> [D]; 1 where both are empty."""
    inter = (a & b).flatten(1).sum(1).double()
    union = (a | b).flatten(1).sum(1).double()
    return torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(union))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("size", SIZES)
def test_matches_torchvision(size, dtype):
    gen = torch.Generator().manual_seed(sum(size))
    boxes = _boxes(gen, 60, *size, dtype)
    masks = _masks(gen, len(boxes), dtype)
    expected = paste_masks_in_image(masks, boxes, size)
    got = paste_masks(masks, boxes, size)
    assert got.shape == expected.shape == (len(boxes), 1, *size)
    assert got.dtype == dtype
    # Values to rounding everywhere, so every mask lands on exactly torchvision's pixels: a box placed one pixel
    # off, or stretched to another size, would differ by the mask's gradient (~1e-2), not by ~1e-7.
    torch.testing.assert_close(got, expected, rtol=0, atol=ATOL[dtype])
    if dtype == torch.float32:  # same support: the float32 weights are rounded as torch's kernels round them
        assert torch.equal(got != 0, expected != 0)
    iou = _iou(got[:, 0] >= 0.5, expected[:, 0] >= 0.5)
    assert iou.min() >= 0.99, f"per-instance mask IoU down to {iou.min():.4f}"
    flipped = ((got >= 0.5) != (expected >= 0.5)).double().mean()
    assert flipped <= 1e-5, f"{flipped:.2e} of the thresholded pixels differ"


def test_masks_of_all_sizes_in_one_call():
    """Boxes from 1 px to larger than the image, in one call and in chunks of any size, give the same masks."""
    gen = torch.Generator().manual_seed(0)
    size = (120, 90)
    boxes = _boxes(gen, 40, *size, torch.float32)
    masks = _masks(gen, len(boxes), torch.float32)
    whole = paste_masks(masks, boxes, size)
    for chunk_elements in (1, 5000, 10**5):
        assert torch.equal(paste_masks(masks, boxes, size, chunk_elements=chunk_elements), whole)
    one_by_one = torch.cat([paste_masks(masks[i : i + 1], boxes[i : i + 1], size) for i in range(len(boxes))])
    assert torch.equal(one_by_one, whole)


def _images(gen: torch.Generator, dtype: torch.dtype) -> tuple[list, list, list]:
    """Masks, boxes and sizes of 5 images of different sizes, one of them without detections."""
    sizes = [(64, 64), (97, 131), (40, 30), (256, 256), (120, 90)]
    boxes = [_boxes(gen, n, h, w, dtype) for n, (h, w) in zip([20, 5, 0, 30, 12], sizes, strict=True)]
    return [_masks(gen, len(b), dtype) for b in boxes], boxes, sizes


def test_images_pasted_together_equal_each_pasted_alone():
    masks, boxes, sizes = _images(torch.Generator().manual_seed(3), torch.float32)
    together = paste_masks_in_images(masks, boxes, sizes)
    for m, b, size, got in zip(masks, boxes, sizes, together, strict=True):
        assert got.shape == (len(m), 1, *size)
        assert torch.equal(got, paste_masks(m, b, size))
    assert paste_masks_in_images([], [], []) == []
    with pytest.raises(ValueError, match="2 masks, 1 boxes, 2 sizes"):
        paste_masks_in_images(masks[:2], boxes[:1], sizes[:2])


def test_boxes_outside_the_image_give_empty_masks():
    boxes = torch.tensor([[-50.0, 10, -20, 30], [10, 200, 40, 230], [130, 5, 150, 25], [-30, -30, -5, -5]])
    masks = torch.ones(len(boxes), 1, M, M)
    assert not paste_masks(masks, boxes, (100, 120)).any()
    inside = torch.tensor([[10.0, 10, 40, 30]])
    assert paste_masks(torch.ones(1, 1, M, M), inside, (100, 120)).any()


def test_no_detections_and_half_precision():
    empty = paste_masks(torch.zeros(0, 1, M, M), torch.zeros(0, 4), (50, 60))
    assert empty.shape == (0, 1, 50, 60)
    masks = _masks(torch.Generator().manual_seed(1), 3, torch.float32)
    boxes = torch.tensor([[3.0, 4, 30, 40], [0, 0, 60, 50], [20.5, 10.2, 22.1, 12.9]])
    half = paste_masks(masks.half(), boxes, (50, 60))
    assert half.dtype == torch.float16
    torch.testing.assert_close(half.float(), paste_masks(masks, boxes, (50, 60)), rtol=0, atol=1e-3)


def test_bad_shapes_are_named():
    with pytest.raises(ValueError, match=r"masks \[D, 1, M, M\] and boxes \[D, 4\]"):
        paste_masks(torch.zeros(2, M, M), torch.zeros(2, 4), (10, 10))


def test_segm_ap_equals_torchvision_paste_on_a_validation(tmp_path):
    """COCO segm AP of the same detections pasted both ways, on a shapes val set: detections are each ground
    truth's mask cropped (RoIAlign) at jittered boxes, with random scores, several per object."""
    # Imported here: the CUDA test runs where pycocotools is not installed (the GPU machine).
    from maskrcnn.coco_eval import CocoEvaluator, detections_to_coco
    from maskrcnn.data.coco import CocoInstances
    from maskrcnn.data.shapes import ensure_shapes_dataset

    root = ensure_shapes_dataset(tmp_path / "s", num_train=1, num_val=12, image_size=128, max_size=64, workers=1)
    val = CocoInstances(root / "val", root / "annotations" / "instances_val.json")
    gen = torch.Generator().manual_seed(0)
    results = {"ours": ([], []), "torchvision": ([], [])}
    for i in range(len(val)):
        _, target = val[i]
        gt_boxes = target["boxes"].repeat(3, 1)
        sides = (gt_boxes[:, 2:] - gt_boxes[:, :2]).repeat(1, 2)
        boxes = gt_boxes + torch.randn(gt_boxes.shape, generator=gen) * sides * 0.08
        index = torch.arange(len(target["boxes"])).repeat(3)
        rois = torch.cat([index[:, None].float(), boxes], 1)
        crops = roi_align(target["masks"][:, None].float(), rois, (M, M), 1.0, 2, aligned=True)
        size = tuple(target["masks"].shape[-2:])
        for name, paste in (("ours", paste_masks), ("torchvision", paste_masks_in_image)):
            det = {
                "boxes": boxes,
                "scores": torch.rand(len(boxes), generator=torch.Generator().manual_seed(i)),
                "labels": target["labels"].repeat(3),
                "masks": paste(crops, boxes, size),
            }
            bbox, segm = detections_to_coco(int(target["image_id"]), det, val.contiguous_to_category_id)
            results[name][0].extend(bbox)
            results[name][1].extend(segm)
    evaluator = CocoEvaluator(val.annotation_file)
    ours = evaluator.evaluate(*results["ours"])
    theirs = evaluator.evaluate(*results["torchvision"])
    assert 0.2 < theirs["segm/AP"] < 0.95, "the detections should neither fail nor saturate the metric"
    for key in ("segm/AP", "segm/AP50", "segm/AP75"):
        assert ours[key] == pytest.approx(theirs[key], abs=1e-3), (key, ours[key], theirs[key])


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_cuda_equals_cpu(dtype):
    """The CUDA path (one scatter per chunk) equals the CPU path (slice copies) bitwise: the same element-wise
    operations, none of them fused, in the same order."""
    masks, boxes, sizes = _images(torch.Generator().manual_seed(2), dtype)
    cpu = paste_masks_in_images(masks, boxes, sizes)
    for chunk_elements in (5000, 2**22):
        cuda = paste_masks_in_images([m.cuda() for m in masks], [b.cuda() for b in boxes], sizes, chunk_elements)
        for i, (a, b) in enumerate(zip(cuda, cpu, strict=True)):
            assert a.device.type == "cuda" and a.shape == b.shape
            assert torch.equal(a.cpu(), b), (sizes[i], chunk_elements)
