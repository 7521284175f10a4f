"""Weights and checkpoint files a user gets wrong: each error names the file and says what it is and what to do."""

from urllib.error import URLError

import pytest
import torch
import torchvision

from maskrcnn.backbones import build_resnet
from maskrcnn.checkpoints import CheckpointError
from maskrcnn.data.coco import DatasetNotFoundError
from maskrcnn.evaluate_checkpoint import evaluate
from maskrcnn.torchvision_weights import convert
from maskrcnn.training import train


def _no_download(*args, **kwargs):
    raise URLError("no network (test)")


@pytest.fixture
def offline(monkeypatch, tmp_path):
    """No network and an empty torch hub cache: what a user offline has."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    monkeypatch.setattr(torchvision.models._api, "load_state_dict_from_url", _no_download)


def test_garbage_weights_file(tmp_path):
    path = tmp_path / "resnet50.pth"
    path.write_bytes(b"<html>404 Not Found</html>")
    with pytest.raises(CheckpointError, match=r"resnet50\.pth: not a model\.backbone\.weights written by torch\.save"):
        build_resnet("resnet50", str(path), "frozen_bn")


def test_truncated_weights_file(tmp_path):
    path = tmp_path / "resnet18.pth"
    torch.save(torchvision.models.resnet18().state_dict(), path)
    path.write_bytes(path.read_bytes()[:4096])
    with pytest.raises(CheckpointError, match=r"resnet18\.pth: not a readable model\.backbone\.weights \(truncated"):
        build_resnet("resnet18", str(path), "bn")


def test_weights_of_another_architecture(tmp_path):
    path = tmp_path / "resnet18.pth"
    torch.save(torchvision.models.resnet18().state_dict(), path)
    with pytest.raises(ValueError, match=r"resnet18\.pth does not fit resnet50"):
        build_resnet("resnet50", str(path), "bn")


def test_detectron2_pkl_is_named_as_such(tmp_path):
    path = tmp_path / "model_final_f10217.pkl"
    path.write_bytes(b"\x80\x04\x95" + b"\x00" * 64)  # a pickle, not a torch.save zip
    with pytest.raises(CheckpointError, match=r"model_final_f10217\.pkl: .*detectron2.*not a file written by torch"):
        build_resnet("resnet50", str(path), "bn")


def test_a_name_that_is_neither_file_nor_torchvision_weights():
    with pytest.raises(ValueError, match=r"'resnet50_imagenet' is neither a file nor a weights name of resnet50 \("):
        build_resnet("resnet50", "resnet50_imagenet", "bn")


def test_an_existing_file_without_suffix_loads(tmp_path):
    path = tmp_path / "r18weights"
    state = torchvision.models.resnet18().state_dict()
    torch.save(state, path)
    resnet = build_resnet("resnet18", str(path), "bn")
    assert torch.equal(resnet.conv1.weight, state["conv1.weight"])


def test_named_weights_offline_say_which_file_to_place(offline, tmp_path):
    with pytest.raises(RuntimeError, match=r"torch_home/hub/checkpoints/resnet18-f37072fd\.pth .*local file"):
        build_resnet("resnet18", "IMAGENET1K_V1", "bn")


def test_missing_coco_is_reported_before_any_download(compose_cfg, offline, tmp_path):
    overrides = ["experiment=coco_r50_fpn_1x", "trainer.devices=1", f"data.root={tmp_path / 'coco'}"]
    cfg = compose_cfg("train", [*overrides, f"paths.output_dir={tmp_path}"])
    with pytest.raises(DatasetNotFoundError, match=r"train images at .*coco/train2017.*COCO_ROOT"):
        train(cfg)


def test_evaluate_a_text_file(compose_cfg, tmp_path):
    notes = tmp_path / "notes.txt"
    notes.write_text("hello, these are my notes\n")
    cfg = compose_cfg("evaluate", [f"ckpt_path={notes}", f"paths.output_dir={tmp_path}"])
    with pytest.raises(CheckpointError, match=r"notes\.txt: not a checkpoint written by torch\.save.*b'hello"):
        evaluate(cfg)


def test_evaluate_a_raw_state_dict_points_to_the_converter(compose_cfg, tmp_path):
    path = tmp_path / "weights.pth"
    torch.save({"conv.weight": torch.zeros(1)}, path)
    cfg = compose_cfg("evaluate", [f"ckpt_path={path}", f"paths.output_dir={tmp_path}"])
    with pytest.raises(CheckpointError, match=r"not a checkpoint written by train\.py.*maskrcnn\.torchvision_weights"):
        evaluate(cfg)


def test_converter_refuses_v2_and_foreign_state_dicts(tmp_path):
    v2 = tmp_path / "maskrcnn_v2.pth"
    v2_keys = ("roi_heads.box_predictor.cls_score.weight", "roi_heads.box_head.0.0.weight")
    torch.save({key: torch.zeros(91, 8) for key in v2_keys}, v2)
    with pytest.raises(CheckpointError, match=r"maskrcnn_v2\.pth: these are maskrcnn_resnet50_fpn_v2 weights"):
        convert(v2, tmp_path / "out.ckpt")
    resnet = tmp_path / "resnet18.pth"
    torch.save(torchvision.models.resnet18().state_dict(), resnet)
    with pytest.raises(CheckpointError, match=r"resnet18\.pth: not a torchvision Mask R-CNN state_dict"):
        convert(resnet, tmp_path / "out.ckpt")
    assert not (tmp_path / "out.ckpt").exists()
