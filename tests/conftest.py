"""Shared fixtures: composing the Hydra configs the way train.py does, shrunk for tests.

hydra and maskrcnn are imported inside the fixture, so that the tests that need neither (the op tests) collect
and run where hydra is not installed.
"""

import pytest


@pytest.fixture
def compose_cfg():
    """compose_cfg(config_name, overrides, **compose_kwargs) -> DictConfig, without running Hydra's app."""
    from maskrcnn.config import compose_config

    return compose_config


# Non-contiguous class ids, as a user's COCO export has them: predictions must carry the id, not the label.
SMOKE_CLASSES = [{"id": 3, "name": "circle"}, {"id": 7, "name": "square"}, {"id": 9, "name": "triangle"}]


@pytest.fixture(scope="session")
def untrained_checkpoint(tmp_path_factory):
    """An untrained smoke-size detector (r18_fpn, 128 px, roi=align with our op, SMOKE_CLASSES) saved as train.py
    saves it; at most 5 detections an image, so that pasting masks at 3000x2000 stays cheap."""
    import torch

    from maskrcnn.config import compose_config
    from maskrcnn.lightning_module import CHECKPOINT_FORMAT
    from maskrcnn.training import build_module

    root = tmp_path_factory.mktemp("untrained_checkpoint")
    cfg = compose_config("train", ["experiment=smoke", f"paths.output_dir={root}",
                                   "model.roi_heads.detections_per_img=5"])  # fmt: skip
    torch.manual_seed(0)
    module = build_module(cfg, SMOKE_CLASSES)
    path = root / "last.ckpt"
    torch.save({"hyper_parameters": dict(module.hparams), "state_dict": module.state_dict(),
                "checkpoint_format": CHECKPOINT_FORMAT}, path)  # fmt: skip
    return path
