"""RoI extractor: FPN level mapping and multi-level pooling against per-level torchvision calls."""

import math

import pytest
import torch
import torchvision

from roi_heads import RoIExtractor, RoIOp, TorchvisionRoIOp, level_of_boxes


def test_level_mapping_matches_fpn_formula():
    sides = torch.tensor([8.0, 56.0, 111.9, 112.0, 223.9, 224.0, 448.0, 1000.0])
    boxes = torch.stack([torch.zeros_like(sides), torch.zeros_like(sides), sides, sides], dim=1)
    expected = [min(max(math.floor(4 + math.log2(s / 224) + 1e-6), 2), 5) for s in sides.tolist()]
    assert level_of_boxes(boxes, 2, 5).tolist() == expected
    assert expected == [2, 2, 2, 3, 3, 4, 5, 5]


def test_level_mapping_is_configurable():
    boxes = torch.tensor([[0.0, 0.0, 112.0, 112.0]])
    assert level_of_boxes(boxes, 2, 5, canonical_scale=112, canonical_level=3).item() == 3
    assert level_of_boxes(boxes, 2, 5, canonical_scale=224, canonical_level=5).item() == 4


def test_level_mapping_keeps_non_finite_boxes_in_range():
    boxes = torch.tensor([[0.0, 0.0, float("nan"), 10.0], [0.0, 0.0, float("inf"), 10.0], [5.0, 5.0, 5.0, 5.0]])
    assert level_of_boxes(boxes, 2, 5).tolist() == [2, 5, 2]


def _pyramid(n=2, c=3, size=64):
    torch.manual_seed(0)
    return {
        str(i): torch.randn(n, c, size >> (i + 2), size >> (i + 2), dtype=torch.float64) for i in range(4)
    }


def test_multilevel_equals_per_level_torchvision():
    features = _pyramid()
    boxes = [
        torch.tensor(
            [[0.0, 0.0, 10.0, 12.0], [5.0, 5.0, 60.0, 60.0], [3.0, 4.0, 40.0, 30.0]], dtype=torch.float64
        ),
        torch.tensor([[1.0, 2.0, 63.0, 50.0], [10.0, 10.0, 14.0, 15.0]], dtype=torch.float64),
    ]
    extractor = RoIExtractor(
        TorchvisionRoIOp("align"),
        ["0", "1", "2", "3"],
        [4, 8, 16, 32],
        7,
        canonical_scale=32,
        canonical_level=4,
    )
    out = extractor(features, boxes)
    assert out.shape == (5, 3, 7, 7)
    all_boxes = torch.cat(boxes)
    image = torch.tensor([0, 0, 0, 1, 1])
    levels = level_of_boxes(all_boxes, 2, 5, 32, 4)
    assert len(set(levels.tolist())) > 1, "the test must exercise several levels"
    for r in range(5):
        lvl = int(levels[r])
        roi = torch.cat([image[r : r + 1].double(), all_boxes[r]])[None]
        ref = torchvision.ops.roi_align(features[str(lvl - 2)], roi, 7, 1 / 2**lvl, 2, True)
        torch.testing.assert_close(out[r : r + 1], ref, rtol=0, atol=1e-12)


def test_single_level_uses_stride_as_scale():
    feature = torch.randn(1, 4, 8, 8, dtype=torch.float64)
    boxes = [torch.tensor([[32.0, 32.0, 200.0, 160.0]], dtype=torch.float64)]
    extractor = RoIExtractor(TorchvisionRoIOp("pool"), ["0"], [32], 7)
    roi = torch.tensor([[0.0, 32.0, 32.0, 200.0, 160.0]], dtype=torch.float64)
    torch.testing.assert_close(
        extractor({"0": feature}, boxes), torchvision.ops.roi_pool(feature, roi, 7, 1 / 32)
    )


def test_rejects_bad_strides():
    with pytest.raises(ValueError, match="powers of two"):
        RoIExtractor(RoIOp("align"), ["0", "1"], [4, 6], 7)
    with pytest.raises(ValueError, match="one stride per feature map"):
        RoIExtractor(RoIOp("align"), ["0", "1"], [4], 7)


def test_roi_op_rejects_unknown_and_unsupported_choices():
    with pytest.raises(ValueError, match="roi.kind"):
        RoIOp("crop")
    with pytest.raises(ValueError, match="torchvision.ops has no counterpart"):
        TorchvisionRoIOp("warp")
    with pytest.raises(ValueError, match="torchvision.ops has no counterpart"):
        TorchvisionRoIOp("align", pool_mode="max")
