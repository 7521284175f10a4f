"""A RoI extractor written outside the repo, as a user writes one: both forms of the contract, both ways to plug
in, on FPN and C5; its own name everywhere; and the refusals (an untrue name, a broken extractor) at build time."""

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from omegaconf import open_dict

from maskrcnn.analysis import gap_report
from maskrcnn.builders import build_model
from maskrcnn.roi_config import RoIConfigError
from maskrcnn.training import train
from roi_heads import ExtractorError

REPO = Path(__file__).resolve().parents[1]

# Written against the public contract only: torch, torchvision and roi_heads.contract's documented signatures.
MODULE = '''
import torch
import torchvision
from torch import nn


class BlendOp(nn.Module):
    """A plain single-level op, not derived from our base class: a learned blend of RoIAlign and RoIPool."""

    def __init__(self, mix: float = 0.5):
        super().__init__()
        self.mix = nn.Parameter(torch.tensor(mix))

    def forward(self, feature, rois, output_size, spatial_scale):
        align = torchvision.ops.roi_align(feature, rois, output_size, spatial_scale, 2, True)
        pool = torchvision.ops.roi_pool(feature, rois, output_size, spatial_scale)
        return self.mix * align + (1 - self.mix) * pool


class MultiScalePooler(nn.Module):
    """torchvision style: built per branch with featmap_names and output_size, called with image sizes."""

    def __init__(self, featmap_names, output_size, sampling_ratio=2):
        super().__init__()
        self.pool = torchvision.ops.MultiScaleRoIAlign(featmap_names, output_size, sampling_ratio)

    def forward(self, features, boxes, image_sizes):
        return self.pool(features, boxes, image_sizes)


class OneTooBig(nn.Module):
    def forward(self, feature, rois, output_size, spatial_scale):
        return torchvision.ops.roi_align(feature, rois, output_size + 1, spatial_scale, 2, True)


class TwoArguments(nn.Module):
    def forward(self, feature, rois):
        return feature
'''


@pytest.fixture(scope="module")
def user_dir(tmp_path_factory):
    """A folder outside the repo: ext_<id>.py (a unique module name per test session) and roi/*.yaml beside it."""
    folder = tmp_path_factory.mktemp("my_extractors")
    module = f"ext_{folder.name.replace('-', '_')}"
    (folder / f"{module}.py").write_text(textwrap.dedent(MODULE))
    (folder / "roi").mkdir()
    (folder / "roi" / "blend.yaml").write_text(f"_target_: {module}.BlendOp\nname: blend\nmix: 0.3\n")
    (folder / "roi" / "multiscale.yaml").write_text(f"_target_: {module}.MultiScalePooler\nname: multiscale\n")
    return folder, module


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("data")


def _tiny(data_dir: Path, out: Path, *extra: str) -> list[str]:
    """experiment=smoke cut to 2 steps and one validation: the extractor trains, backward included."""
    return ["experiment=smoke", f"paths.data_dir={data_dir}", f"paths.output_dir={out}", "trainer.max_steps=2",
            "trainer.val_check_interval=2", "train.vis_images=0", *extra]  # fmt: skip


# (model, how it plugs in, the roi overrides): both forms on both models, both ways in.
CASES = {
    "fpn_op_by_target": ("r18_fpn", ["roi._target_={module}.BlendOp", "roi.name=blend_cli"]),
    "fpn_pooler_by_searchpath": ("r18_fpn", ["roi=multiscale", "hydra.searchpath=[file://{folder}]"]),
    "c5_op_by_searchpath": ("r18_c5", ["roi=blend", "hydra.searchpath=[file://{folder}]"]),
    "c5_pooler_by_target": ("r18_c5", ["roi._target_={module}.MultiScalePooler", "roi.name=multiscale_cli"]),
}


@pytest.fixture(scope="module")
def user_runs(user_dir, data_dir, tmp_path_factory, request):
    from maskrcnn.config import compose_config

    folder, module = user_dir
    sys.path.insert(0, str(folder))  # the roi._target_ cases: the user put the module on PYTHONPATH
    request.addfinalizer(lambda: sys.path.remove(str(folder)))
    runs = {}
    for case, (model, overrides) in CASES.items():
        out = tmp_path_factory.mktemp(case)
        extra = [o.format(module=module, folder=folder) for o in overrides]
        cfg = compose_config("train", [*_tiny(data_dir, out, f"model={model}"), *extra], return_hydra_config=True)
        run_dir = cfg.hydra.run.dir  # what the CLI would name it
        with open_dict(cfg):
            del cfg["hydra"]
        runs[case] = (out, run_dir, train(cfg))
    return runs


@pytest.mark.parametrize("case", CASES)
def test_a_user_extractor_trains_under_its_own_name(user_runs, case):
    out, run_dir, metrics = user_runs[case]
    name = {"fpn_op_by_target": "blend_cli", "fpn_pooler_by_searchpath": "multiscale",
            "c5_op_by_searchpath": "blend", "c5_pooler_by_target": "multiscale_cli"}[case]  # fmt: skip
    model = CASES[case][0]
    assert metrics["roi"] == name and metrics["model"] == model and metrics["steps"] == 2
    assert json.loads((out / "metrics.json").read_text())["roi"] == name
    assert run_dir.endswith(f"_{model}_{name}_s0"), run_dir
    hparams = (out / "tensorboard" / "hparams.yaml").read_text()
    assert f"name: {name}" in hparams


def test_the_gap_report_shows_user_extractors_under_their_names(user_runs, tmp_path, capsys):
    gap_report.main([str(out) for out, _, _ in user_runs.values()] + ["--out", str(tmp_path)])
    table = (tmp_path / "roi_gap.md").read_text()
    for name in ("blend_cli", "multiscale", "blend", "multiscale_cli"):
        assert f"| {name} |" in table, name
    assert "| align |" not in table
    assert {r["roi"] for r in json.loads((tmp_path / "roi_gap.json").read_text())} == {
        "blend_cli", "multiscale", "blend", "multiscale_cli"}


def test_the_op_of_a_user_trains(user_runs):
    """BlendOp's `mix` is a parameter of the model: registered, checkpointed and trained."""
    import torch

    out, _, _ = user_runs["fpn_op_by_target"]
    state = torch.load(out / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)["state_dict"]
    mixes = [v for k, v in state.items() if k.endswith(".mix")]
    assert mixes and all(m.item() != pytest.approx(0.3, abs=1e-7) for m in mixes), "2 SGD steps moved it"


def _build(compose_cfg, *overrides):
    cfg = compose_cfg("train", ["model=r18_fpn", *overrides])
    return build_model(cfg.model, cfg.roi, 3, 128, 128)


def test_a_builtin_name_on_another_extractor_is_refused_naming_both(compose_cfg, user_dir):
    folder, module = user_dir
    with pytest.raises(RoIConfigError) as e:
        _build(compose_cfg, f"roi._target_={module}.BlendOp", f"hydra.searchpath=[file://{folder}]")
    message = str(e.value)
    assert "roi.name='align'" in message and "configs/roi/align.yaml" in message
    assert f"{module}.BlendOp(" in message and "roi_heads.RoIOp(kind=align" in message
    with pytest.raises(RoIConfigError, match=r"names the built-in variant configs/roi/pool.yaml.*sampling_ratio=2"):
        _build(compose_cfg, "roi=pool", "roi.sampling_ratio=2")  # our op, other arguments: not `pool` either
    _build(compose_cfg, "roi=pool", "roi.sampling_ratio=2", "roi.name=pool_sr2")  # with a name of its own


def test_the_run_directory_is_not_named_after_an_untrue_name(compose_cfg, user_dir):
    folder, module = user_dir
    cfg = compose_cfg("train", [f"roi._target_={module}.BlendOp", f"hydra.searchpath=[file://{folder}]"],
                      return_hydra_config=True)  # fmt: skip
    with pytest.raises(Exception, match="names the built-in variant"):
        _ = cfg.hydra.run.dir


@pytest.mark.parametrize(
    ("cls", "pattern"),
    [
        ("OneTooBig", r"OneTooBig \(roi.name=big\): op\(Tensor\[2, 128, 16, 24\] float32, rois Tensor\[3, 5\] "
                      r"float32, output_size=7, spatial_scale=0.25\) returned Tensor\[3, 128, 8, 8\] float32, "
                      r"expected Tensor\[3, 128, 7, 7\] float32"),
        ("TwoArguments", r"TwoArguments \(roi.name=big\): op\(.*\) raised TypeError: .*forward\(\) takes 3 "
                         r"positional arguments but 5 were given"),
    ],
)
def test_a_broken_extractor_is_refused_when_the_model_is_built(compose_cfg, user_dir, cls, pattern):
    folder, module = user_dir
    with pytest.raises(ExtractorError, match=pattern):
        _build(compose_cfg, f"roi._target_={module}.{cls}", "roi.name=big", f"hydra.searchpath=[file://{folder}]")


def test_a_config_without_a_name_fails_with_a_message_not_a_hydra_crash(user_dir, tmp_path):
    folder, module = user_dir
    (folder / "roi" / "nameless.yaml").write_text(f"_target_: {module}.BlendOp\n")
    done = subprocess.run(
        [sys.executable, str(REPO / "train.py"), "experiment=smoke", "roi=nameless", f"hydra.searchpath=[file://{folder}]"],
        cwd=tmp_path, capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 1
    assert done.stderr.startswith(f"error: the roi config (_target_: {module}.BlendOp) has no `name`")
    assert "Traceback" not in done.stderr and "Hydra's exception formatting" not in done.stderr
    assert not (tmp_path / "outputs").exists(), "no run directory for a run that cannot be named"
