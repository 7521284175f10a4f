"""RoI heads: proposal sampling, mask targets, losses and post-processing."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.detection._utils import BoxCoder

from roi_heads.losses import box_losses, mask_loss, mask_targets
from roi_heads.mask_head import MaskConvHead, MaskPredictor
from roi_heads.postprocess import detect_boxes, mask_probabilities
from roi_heads.sampling import ProposalSampler

CODER = BoxCoder(weights=(10.0, 10.0, 5.0, 5.0))


def _target(boxes, labels, crowd_boxes=()):
    return {
        "boxes": torch.tensor(boxes, dtype=torch.float32),
        "labels": torch.tensor(labels),
        "masks": torch.zeros(len(boxes), 64, 64, dtype=torch.uint8),
        "crowd_boxes": torch.tensor(crowd_boxes, dtype=torch.float32).reshape(-1, 4),
    }


def test_sampler_labels_positives_negatives_and_ignores_crowd():
    target = _target([[0, 0, 20, 20]], [3], crowd_boxes=[[30, 30, 60, 60]])
    proposals = torch.tensor(
        [[1.0, 1, 20, 20], [31, 31, 60, 60], [40, 0, 60, 20], [0, 40, 20, 60]]  # pos, near-crowd, neg, neg
    )
    out = ProposalSampler(CODER, batch_size_per_image=100, positive_fraction=0.5)([proposals], [target])
    boxes, labels = out.boxes[0], out.labels[0]
    as_rows = {tuple(b.tolist()): int(lab) for b, lab in zip(boxes, labels, strict=True)}
    assert as_rows[(1.0, 1.0, 20.0, 20.0)] == 3
    assert as_rows[(0.0, 0.0, 20.0, 20.0)] == 3, "GT boxes join the proposals as positives"
    assert as_rows[(40.0, 0.0, 60.0, 20.0)] == 0 and as_rows[(0.0, 40.0, 20.0, 60.0)] == 0
    assert (31.0, 31.0, 60.0, 60.0) not in as_rows, "a proposal on a crowd region is never a negative"
    assert (30.0, 30.0, 60.0, 60.0) not in as_rows, "a crowd box is never a positive"
    pos = labels > 0
    assert out.matched_gt[0][pos].tolist() == [0] * int(pos.sum())
    decoded = CODER.decode_single(out.regression_targets[0][pos], boxes[pos])
    torch.testing.assert_close(decoded, target["boxes"][:1].expand_as(decoded), atol=1e-4, rtol=0)


def test_sampler_image_without_objects_gives_only_background():
    target = _target([], [])
    target["boxes"] = target["boxes"].reshape(0, 4)
    proposals = torch.tensor([[0.0, 0, 10, 10], [5, 5, 30, 30]])
    out = ProposalSampler(CODER, batch_size_per_image=8)([proposals], [target])
    assert out.labels[0].tolist() == [0, 0]
    assert torch.isfinite(out.regression_targets[0]).all()


def test_sampler_respects_budget_and_positive_fraction():
    torch.manual_seed(0)
    target = _target([[10, 10, 50, 50]], [1])
    jitter = torch.randn(300, 4) * 2
    proposals = torch.cat(
        [torch.tensor([[10.0, 10, 50, 50]]) + jitter[:100], torch.rand(200, 4).sort(dim=1).values * 5 + 55]
    )
    proposals = torch.stack(
        [
            proposals[:, 0],
            proposals[:, 1],
            proposals[:, 0].max(proposals[:, 2]) + 1,
            proposals[:, 1].max(proposals[:, 3]) + 1,
        ],
        1,
    )
    out = ProposalSampler(CODER, batch_size_per_image=64, positive_fraction=0.25)([proposals], [target])
    assert len(out.labels[0]) == 64
    assert int((out.labels[0] > 0).sum()) == 16


def test_mask_targets_crop_and_resample_gt():
    gt = torch.zeros(2, 32, 32, dtype=torch.uint8)
    gt[0, 0:16, :] = 1  # top half of the image
    gt[1, :, 16:] = 1  # right half
    boxes = torch.tensor([[0.0, 0, 32, 32], [16.0, 0, 32, 32], [0.0, 0, 32, 32]])
    crops = mask_targets(gt, boxes, torch.tensor([0, 1, 1]), 4)
    assert crops[0].tolist() == [[1] * 4] * 2 + [[0] * 4] * 2
    assert crops[1].tolist() == [[1] * 4] * 4, "the RoI lies entirely in the right half"
    assert crops[2].tolist() == [[0, 0, 1, 1]] * 4
    assert mask_targets(gt, boxes[:0], torch.zeros(0, dtype=torch.int64), 4).shape == (0, 4, 4)


def test_mask_loss_without_positives_keeps_every_mask_parameter_in_the_graph():
    head, predictor = MaskConvHead(4, [8]), MaskPredictor(8, 8, num_classes=3)
    logits = predictor(head(torch.randn(0, 4, 7, 7)))
    loss = mask_loss(logits, torch.zeros(0, dtype=torch.int64), torch.zeros(0, 14, 14))
    loss.backward()
    assert loss.item() == 0.0
    params = list(head.parameters()) + list(predictor.parameters())
    assert all(p.grad is not None and (p.grad == 0).all() for p in params)


def _predictor_as_convolutions(predictor: MaskPredictor, x: torch.Tensor) -> torch.Tensor:
    """The predictor's function as it was written before issue #26: conv_transpose2d, ReLU, 1x1 conv."""
    hidden = F.conv_transpose2d(x, predictor.deconv.weight, predictor.deconv.bias, stride=2).relu()
    return F.conv2d(hidden, predictor.logits.weight, predictor.logits.bias)


def _abs_max(t: torch.Tensor) -> torch.Tensor:
    return t.abs().max() if t.numel() else t.new_zeros(())


def _spread(predictor: MaskPredictor) -> MaskPredictor:
    """Non-trivial logits and biases (the init gives std 0.001 logits and zero biases)."""
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in predictor.parameters():
            p.copy_(torch.randn(p.shape, generator=gen, dtype=p.dtype) * 0.3)
    return predictor


def _value_and_grads(module: nn.Module, fn, x: torch.Tensor, grad_out: torch.Tensor) -> list[torch.Tensor]:
    """fn(module, x) and the gradients of <fn(module, x), grad_out> for x and every parameter, in float64."""
    x = x.clone().requires_grad_()
    out = fn(module, x)
    grads = torch.autograd.grad(out, [x, *module.parameters()], grad_out.to(out.dtype))
    return [t.detach().double() for t in (out, *grads)]


@pytest.mark.parametrize("num_rois", [0, 1, 37])
def test_mask_predictor_equals_the_transposed_convolution(num_rois):
    """Outputs and all gradients equal F.conv_transpose2d + ReLU + conv2d: to ~1e-15 in float64 (both signs
    of the pre-activation, so the ReLU gates), and in float32 no farther from the float64 result than the
    convolutions' own float32 rounding (times 4). The float32 case keeps every pre-activation positive: where one
    is within float32 rounding of 0, either side of the ReLU's kink is right, and their gradients differ by O(1)."""
    gen = torch.Generator().manual_seed(0)
    predictor = _spread(MaskPredictor(24, 16, num_classes=5)).double()
    x = torch.randn(num_rois, 24, 7, 7, dtype=torch.float64, generator=gen)
    grad_out = torch.randn(num_rois, 6, 14, 14, dtype=torch.float64, generator=gen)
    exact = _value_and_grads(predictor, _predictor_as_convolutions, x, grad_out)
    ours = _value_and_grads(predictor, MaskPredictor.forward, x, grad_out)
    for a, b in zip(ours, exact, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)
    assert num_rois == 0 or (ours[0] != ours[0].flatten()[0]).any()

    with torch.no_grad():  # x >= 0, deconv weights >= 0, bias > 0: every pre-activation > 0.1
        predictor.deconv.weight.abs_()
        predictor.deconv.bias.abs_().add_(0.1)
    x = x.abs()
    exact = _value_and_grads(predictor, _predictor_as_convolutions, x, grad_out)
    predictor32 = MaskPredictor(24, 16, num_classes=5)
    predictor32.load_state_dict({k: v.float() for k, v in predictor.state_dict().items()})
    ours32 = _value_and_grads(predictor32, MaskPredictor.forward, x.float(), grad_out)
    theirs32 = _value_and_grads(predictor32, _predictor_as_convolutions, x.float(), grad_out)
    names = ["logits", "grad x", "grad deconv.weight", "grad deconv.bias", "grad logits.weight", "grad logits.bias"]
    for name, a, b, truth in zip(names, ours32, theirs32, exact, strict=True):
        scale = _abs_max(truth).clamp(min=1e-30)
        ours_error, their_error = _abs_max(a - truth) / scale, _abs_max(b - truth) / scale
        assert ours_error <= 4 * their_error + 1e-7, f"{name}: {ours_error:.2e} vs conv {their_error:.2e}"
        assert ours_error <= 1e-5, f"{name}: {ours_error:.2e}"


def test_mask_predictor_loads_state_dicts_of_the_convolution_modules():
    """The parameters are still those of nn.ConvTranspose2d `deconv` and nn.Conv2d `logits`: a state_dict saved
    from those modules (every checkpoint before issue #26) loads strictly and gives the same logits."""
    old = nn.Module()
    old.deconv, old.logits = nn.ConvTranspose2d(12, 8, 2, stride=2), nn.Conv2d(8, 4, 1)
    old.logits.weight.data.normal_(std=0.5)
    state = old.state_dict()
    assert {k: tuple(v.shape) for k, v in state.items()} == {
        "deconv.weight": (12, 8, 2, 2), "deconv.bias": (8,), "logits.weight": (4, 8, 1, 1), "logits.bias": (4,),
    }  # fmt: skip
    predictor = MaskPredictor(12, 8, num_classes=3)
    assert {k: tuple(v.shape) for k, v in predictor.state_dict().items()} == {
        k: tuple(v.shape) for k, v in state.items()
    }
    predictor.load_state_dict(state, strict=True)
    x = torch.randn(3, 12, 14, 14)
    torch.testing.assert_close(predictor(x), old.logits(old.deconv(x).relu()), rtol=1e-5, atol=1e-6)
    assert predictor(x.contiguous(memory_format=torch.channels_last)).equal(predictor(x))


def test_mask_loss_uses_the_labelled_class_channel():
    logits = torch.full((1, 3, 2, 2), -20.0)
    logits[0, 2] = 20.0  # confident "foreground" only in class 2's map
    target = torch.ones(1, 2, 2)
    assert mask_loss(logits, torch.tensor([2]), target).item() < 1e-6
    assert mask_loss(logits, torch.tensor([1]), target).item() > 10


def test_box_losses_match_hand_computation():
    logits = torch.tensor([[2.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    regression = torch.zeros(2, 12)
    regression[1, 4:8] = torch.tensor([0.5, 0.0, 0.0, 0.0])
    labels = torch.tensor([0, 1])
    targets = torch.zeros(2, 4)
    losses = box_losses(logits, regression, labels, targets)
    ce = torch.nn.functional.cross_entropy(logits, labels)
    torch.testing.assert_close(losses["loss_classifier"], ce)
    smooth_l1 = 0.5 - 0.5 / 9  # |x| - beta/2 for |x| >= beta
    torch.testing.assert_close(losses["loss_box_reg"], torch.tensor(smooth_l1 / 2))


def test_detect_boxes_thresholds_nms_and_caps():
    proposals = [torch.tensor([[10.0, 10, 50, 50], [11, 11, 51, 51], [60, 60, 90, 90]])]
    logits = torch.tensor([[0.0, 5.0, 0.0], [0.0, 4.0, 0.0], [0.0, 0.0, 5.0]])
    dets = detect_boxes(logits, torch.zeros(3, 12), proposals, [(100, 100)], CODER, 0.5, 0.5, 100)[0]
    assert dets["labels"].tolist() == [1, 2] or sorted(dets["labels"].tolist()) == [1, 2]
    assert len(dets["boxes"]) == 2, "the overlapping same-class box is suppressed"
    capped = detect_boxes(logits, torch.zeros(3, 12), proposals, [(100, 100)], CODER, 0.5, 0.5, 1)[0]
    assert len(capped["boxes"]) == 1 and capped["scores"][0] == dets["scores"].max()


def test_mask_probabilities_pick_each_detections_class():
    logits = torch.zeros(2, 3, 2, 2)
    logits[0, 1] = 10.0
    logits[1, 2] = -10.0
    probs = mask_probabilities(logits, torch.tensor([1, 2]))
    assert probs.shape == (2, 1, 2, 2)
    assert (probs[0] > 0.99).all() and (probs[1] < 0.01).all()


def test_mask_targets_come_from_the_matched_instance_beside_crowd_regions():
    """matched_gt indexes target["masks"] directly: instances are the dataset's non-crowd ones, crowd regions only
    boxes; so each positive's mask target is its own instance's mask, whatever crowd regions sit around."""
    target = _target([[0, 0, 32, 32], [32, 32, 64, 64]], [1, 2], crowd_boxes=[[0, 32, 32, 64], [32, 0, 64, 32]])
    target["masks"][0, :16, :] = 1  # instance 0: its box's top half
    target["masks"][1] = 1  # instance 1: everything
    out = ProposalSampler(CODER, batch_size_per_image=100, positive_fraction=1.0)([target["boxes"].clone()], [target])
    pos = out.labels[0] > 0
    crops = mask_targets(target["masks"], out.boxes[0][pos], out.matched_gt[0][pos], 8)
    for crop, label in zip(crops, out.labels[0][pos], strict=True):
        expected = torch.ones(8, 8) if label == 2 else torch.cat([torch.ones(4, 8), torch.zeros(4, 8)])
        torch.testing.assert_close(crop, expected)
    assert sorted(out.labels[0][pos].tolist()) == [1, 1, 2, 2], "proposals and GT boxes, both instances"
