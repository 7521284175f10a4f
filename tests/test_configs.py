"""Every option of every config group composes, and the objects it describes instantiate."""

from pathlib import Path

import pytest
from hydra.utils import instantiate

from maskrcnn.builders import build_model
from roi_heads import RoIFeatureOp

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def _options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONFIGS / group).glob("*.yaml"))


@pytest.mark.parametrize("roi", _options("roi"))
def test_roi_options_build_their_op(compose_cfg, roi):
    cfg = compose_cfg("train", [f"roi={roi}"])
    op = instantiate({k: v for k, v in cfg.roi.items() if k != "name"})
    assert isinstance(op, RoIFeatureOp)
    assert cfg.roi.name == roi
    assert op.kind == cfg.roi.kind
    assert type(op).__name__ == cfg.roi._target_.rpartition(".")[2]


def test_runs_of_ours_and_torchvisions_op_get_their_own_names(compose_cfg):
    """`-m roi=align,align-torchvision` must not write two runs into one directory."""
    subdirs = [
        compose_cfg("train", [f"roi={roi}", "seed=3"], return_hydra_config=True).hydra.sweep.subdir
        for roi in ("align", "align-torchvision")
    ]
    assert subdirs == ["r18_fpn_align_s3", "r18_fpn_align-torchvision_s3"]


@pytest.mark.parametrize("model", _options("model"))
def test_model_options_build(compose_cfg, model):
    cfg = compose_cfg("train", [f"model={model}"])
    net = build_model(cfg.model, cfg.roi, 6, cfg.data.image_min_size, cfg.data.image_max_size)
    assert cfg.model.name == model
    assert sum(p.numel() for p in net.parameters() if p.requires_grad) > 1_000_000


@pytest.mark.parametrize("data", _options("data"))
def test_data_options_instantiate(compose_cfg, data, tmp_path, monkeypatch):
    monkeypatch.setenv("COCO_ROOT", str(tmp_path / "coco"))
    cfg = compose_cfg("train", [f"data={data}", f"paths.data_dir={tmp_path}", f"paths.output_dir={tmp_path}"])
    module = instantiate(cfg.data.module)
    assert module.__class__.__name__ == "InstanceDataModule"
    assert module.classes is None, "the classes come from the training annotations, not from a config"


@pytest.mark.parametrize("experiment", _options("experiment"))
def test_experiments_compose(compose_cfg, experiment, tmp_path):
    cfg = compose_cfg("train", [f"experiment={experiment}", f"paths.output_dir={tmp_path}"])
    assert cfg.trainer.max_steps > 0
    assert cfg.model.name in _options("model")


@pytest.mark.parametrize("trainer", _options("trainer"))
def test_trainer_options_compose(compose_cfg, trainer):
    cfg = compose_cfg("train", [f"trainer={trainer}"])
    assert cfg.trainer._target_ == "pytorch_lightning.Trainer"


def test_optim_options_compose(compose_cfg):
    for optim in _options("optim"):
        cfg = compose_cfg("train", [f"optim={optim}"])
        assert cfg.optim.lr > 0 and list(cfg.optim.steps) == sorted(cfg.optim.steps)
