"""Checkpoints of every format load into today's DetectorModule, or fail saying which format wrote them."""

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from maskrcnn.checkpoints import CheckpointError
from maskrcnn.lightning_module import CHECKPOINT_FORMAT
from maskrcnn.trained_model import load_detector
from maskrcnn.training import build_module

V1_ONLY = {"rpn": ["fg_iou_thresh", "bg_iou_thresh", "positive_fraction", "nms_thresh", "score_thresh",
                   "box_coder_weights"],
           "roi_heads": ["fg_iou_thresh", "bg_iou_thresh", "box_coder_weights", "min_box_size"]}  # fmt: skip


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    """(config, module) of experiment=smoke with its data generated."""
    from maskrcnn.config import compose_config

    data_dir = tmp_path_factory.mktemp("data")
    cfg = compose_config("train", ["experiment=smoke", f"paths.data_dir={data_dir}", f"paths.output_dir={data_dir}"])
    datamodule = instantiate(cfg.data.module)
    datamodule.prepare_data()
    datamodule.setup("fit")
    torch.manual_seed(0)
    return cfg, build_module(cfg, datamodule.classes)


def _format_1_config(cfg) -> dict:
    """The run config as the code before the callbacks wrote it (checkpoint format 1)."""
    old = OmegaConf.to_container(cfg, resolve=True)
    backbone = old["model"]["backbone"]
    backbone["kind"] = backbone.pop("features")
    del backbone["_target_"], old["roi"]["_target_"]
    for section, keys in V1_ONLY.items():
        for key in keys:
            del old["model"][section][key]
    old["optim"]["momentum"] = old["optim"].pop("optimizer")["momentum"]
    old["data"]["num_classes"] = 6
    return old


def test_format_2_round_trip(smoke, tmp_path):
    _, module = smoke
    path = tmp_path / "last.ckpt"
    hparams = dict(module.hparams)
    torch.save({"hyper_parameters": hparams, "state_dict": module.state_dict(), "checkpoint_format": 2}, path)
    loaded, run_config = load_detector(path)
    assert run_config == hparams["run_config"] and not loaded.training
    assert loaded.hparams.classes == module.hparams.classes
    for key, value in module.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key


def test_format_1_checkpoints_load_with_the_thresholds_they_were_trained_with(smoke, tmp_path):
    cfg, module = smoke
    path = tmp_path / "last.ckpt"
    torch.save({"hyper_parameters": {"cfg": _format_1_config(cfg)}, "state_dict": module.state_dict()}, path)
    loaded, run_config = load_detector(path)
    assert run_config["model"]["backbone"]["kind"] == "fpn", "the run config is returned as it was written"
    assert [c["name"] for c in loaded.hparams.classes] == ["circle", "square", "triangle", "ring", "cross", "diamond"]
    rpn, heads = loaded.model.rpn, loaded.model.roi_heads
    assert (rpn.proposal_matcher.high_threshold, rpn.proposal_matcher.low_threshold, rpn.nms_thresh) == (0.7, 0.3, 0.7)
    assert heads.box_coder.weights == (10.0, 10.0, 5.0, 5.0) and heads.min_box_size == 0.01
    for key, value in module.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key


def test_an_unknown_format_names_the_file_and_its_writer(smoke, tmp_path):
    _, module = smoke
    path = tmp_path / "future.ckpt"
    torch.save({"hyper_parameters": dict(module.hparams), "state_dict": {}, "checkpoint_format": 7,
                "pytorch-lightning_version": "9.9"}, path)  # fmt: skip
    expected = rf"future\.ckpt: checkpoint format 7 .*9\.9.*formats 1 to {CHECKPOINT_FORMAT}"
    with pytest.raises(CheckpointError, match=expected):
        load_detector(path)
