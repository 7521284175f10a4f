"""End-to-end parity: one training step of the whole detector with our RoI op vs torchvision's.

Same weights, same batch, same RNG state, in float64: the losses and every parameter's gradient must agree
to float64 rounding. A systematic difference between the ops (a coordinate convention, a gradient at the map
border) would show here long before it shows as an AP difference between two trainings. (In float32 the two
ops round differently at the 1e-7 level, which the mask head's gradients amplify to ~1e-3; two float32
trainings therefore drift apart like two seeds.)
"""

import pytest
import torch

from maskrcnn.builders import build_model
from maskrcnn.data.coco import CocoInstances
from maskrcnn.data.shapes import ensure_shapes_dataset


@pytest.fixture(scope="module")
def batch(tmp_path_factory):
    root = ensure_shapes_dataset(
        tmp_path_factory.mktemp("shapes") / "s", num_train=4, num_val=1, image_size=128, max_size=64, workers=1
    )
    dataset = CocoInstances(root / "train", root / "annotations" / "instances_train.json")
    images, targets = zip(*(dataset[i] for i in range(4)), strict=True)
    as_double = [
        {k: v.double() if torch.is_tensor(v) and v.is_floating_point() else v for k, v in t.items()} for t in targets
    ]
    return [image.double() for image in images], as_double


def _step(compose_cfg, roi: str, impl: str, batch) -> tuple[dict, dict]:
    cfg = compose_cfg("train", [f"roi={roi if impl == 'ours' else roi + '-torchvision'}", "model=r18_fpn"])
    torch.manual_seed(0)
    model = build_model(cfg.model, cfg.roi, 6, 128, 128).train().double()
    torch.manual_seed(1)  # the same proposal sampling draws
    losses = model(*batch)
    sum(losses.values()).backward()
    grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    return {k: v.detach() for k, v in losses.items()}, grads


@pytest.mark.parametrize("roi", ["align", "pool"])
def test_one_training_step_matches_torchvision(compose_cfg, batch, roi):
    ours_losses, ours_grads = _step(compose_cfg, roi, "ours", batch)
    tv_losses, tv_grads = _step(compose_cfg, roi, "torchvision", batch)
    for name, value in tv_losses.items():
        torch.testing.assert_close(ours_losses[name], value, rtol=1e-10, atol=1e-12, msg=name)
    assert ours_grads.keys() == tv_grads.keys()
    for name, grad in tv_grads.items():
        scale = grad.abs().max().clamp_min(1e-12)
        assert (ours_grads[name] - grad).abs().max() / scale < 1e-9, name
