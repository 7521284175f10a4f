"""train.channels_last: the same detector in NHWC gives the NCHW one's losses, gradients and detections to float32
rounding, and really runs in NHWC (the switch is not a no-op)."""

import pytest
import torch

from maskrcnn.training import build_module
from tests.conftest import SMOKE_CLASSES

# At every core, as a plain pytest run has it: at one thread a near-tie in the untrained RPN's scores swaps one of
# image 0's 300 proposals between the layouts, and loss_classifier moves by 8.5e-5 of itself (measured).
pytestmark = pytest.mark.usefixtures("all_cores")


def _batch(seed: int = 0) -> tuple[list[torch.Tensor], list[dict[str, torch.Tensor]]]:
    """Two 128x128 images with three filled boxes each ([3, H, W] in [0, 1]; boxes [3, 4], masks [3, H, W])."""
    g = torch.Generator().manual_seed(seed)
    images, targets = [], []
    for _ in range(2):
        image = torch.rand(3, 128, 128, generator=g) * 0.2
        corners = torch.randint(4, 80, (3, 2), generator=g)
        sizes = torch.randint(16, 44, (3, 2), generator=g)
        boxes = torch.cat([corners, corners + sizes], 1).float()
        masks = torch.zeros(3, 128, 128, dtype=torch.uint8)
        for k, (x0, y0, x1, y1) in enumerate(boxes.int().tolist()):
            masks[k, y0:y1, x0:x1] = 1
            image[:, y0:y1, x0:x1] = torch.rand(3, 1, 1, generator=g)
        images.append(image)
        targets.append({"boxes": boxes, "labels": torch.tensor([1, 2, 3]), "masks": masks,
                        "crowd_boxes": torch.zeros(0, 4)})  # fmt: skip
    return images, targets


@pytest.fixture(scope="module")
def modules():
    """{channels_last: DetectorModule} of experiment=smoke with the same weights."""
    from maskrcnn.config import compose_config

    built = {}
    for channels_last in (False, True):
        cfg = compose_config("train", ["experiment=smoke", f"train.channels_last={channels_last}",
                                       "paths.output_dir=unused"])  # fmt: skip
        torch.manual_seed(0)
        built[channels_last] = build_module(cfg, SMOKE_CLASSES)
    return built


def test_the_switch_puts_weights_and_feature_maps_in_nhwc(modules):
    for channels_last, module in modules.items():
        conv = module.model.backbone.body.conv1.weight
        assert conv.is_contiguous(memory_format=torch.channels_last) == channels_last
        assert module.hparams.channels_last == channels_last  # a checkpoint rebuilds the layout it trained in
        with torch.no_grad():  # eval: no batch-norm statistics updated for the next tests
            features = module.eval().model.backbone(torch.rand(1, 3, 128, 128))  # no 1x1 level, which is both
        assert all(f.is_contiguous(memory_format=torch.channels_last) == channels_last for f in features.values())


def test_same_losses_and_gradients_to_float32_rounding(modules):
    modules[True].load_state_dict(modules[False].state_dict())  # weights and batch-norm statistics
    images, targets = _batch()
    results = {}
    for channels_last, module in modules.items():
        module.train()
        module.zero_grad()
        torch.manual_seed(1)  # the samplers draw the same RoIs
        losses = module.model(images, targets)
        sum(losses.values()).backward()
        grads = {name: p.grad.clone() for name, p in module.named_parameters() if p.grad is not None}
        results[channels_last] = ({k: v.detach() for k, v in losses.items()}, grads)
    (losses_nchw, grads_nchw), (losses_nhwc, grads_nhwc) = results[False], results[True]
    assert losses_nchw.keys() == losses_nhwc.keys()
    assert losses_nchw["loss_mask"] > 0, "the batch must train the mask branch"
    for name, loss in losses_nchw.items():
        torch.testing.assert_close(losses_nhwc[name], loss, rtol=1e-5, atol=1e-7, msg=name)
    assert grads_nchw.keys() == grads_nhwc.keys()
    # Above the ResNet body every parameter's gradient agrees elementwise.
    for name, grad in grads_nchw.items():
        if ".backbone.body." not in name:
            scale = grad.abs().max().item() + 1e-12
            assert (grads_nhwc[name] - grad).abs().max().item() <= 1e-4 * scale, name
    # Inside it, a ReLU input within rounding of 0 may land on the other side of the kink in one layout and
    # switch that unit's gradient: on this batch one unit of layer2.0 (5e-7 against 0.0) moves the gradients
    # below it by ~2e-3 of their norm, all the parameters' by ~1e-4. A wrong layout would move them by O(1).
    diff = torch.cat([(grads_nhwc[n] - g).flatten() for n, g in grads_nchw.items()]).norm()
    assert diff <= 1e-2 * torch.cat([g.flatten() for g in grads_nchw.values()]).norm()


def test_same_detections_to_float32_rounding(modules):
    modules[True].load_state_dict(modules[False].state_dict())  # a training step moved the statistics apart
    images, _ = _batch(seed=1)
    out = {}
    for channels_last, module in modules.items():
        module.eval()
        with torch.no_grad():
            out[channels_last] = module.model(images)
    for nchw, nhwc in zip(out[False], out[True], strict=True):
        assert len(nchw["scores"]) > 0
        torch.testing.assert_close(nhwc["scores"], nchw["scores"], rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(nhwc["boxes"], nchw["boxes"], rtol=1e-4, atol=1e-3)
        assert torch.equal(nhwc["labels"], nchw["labels"])
        torch.testing.assert_close(nhwc["masks"], nchw["masks"], rtol=0, atol=1e-3)
