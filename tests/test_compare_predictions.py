"""maskrcnn.analysis.compare_predictions (+ trained_run): two runs' masks side by side on val images chosen by id."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf
from PIL import Image

from maskrcnn.analysis import compare_predictions
from maskrcnn.analysis.trained_run import load_run
from maskrcnn.config import compose_config
from maskrcnn.lightning_module import CHECKPOINT_FORMAT
from maskrcnn.training import build_module
from maskrcnn.viz import draw_prediction, draw_truth


def _make_run(root, roi, data_dir):
    """A run dir with checkpoints/last.ckpt as train.py's checkpoints hold it (DetectorModule's arguments +
    its weights), untrained; the tiny shapes val set of experiment=smoke is generated into data_dir."""
    run = root / f"smoke_{roi}_s0"
    cfg = compose_config("train", ["experiment=smoke", f"roi={roi}", f"paths.data_dir={data_dir}",
                                   f"paths.output_dir={run}", "model.roi_heads.detections_per_img=5"])  # fast pasting
    datamodule = instantiate(cfg.data.module)
    datamodule.prepare_data()
    datamodule.setup("fit")
    torch.manual_seed(0)  # the same initial weights for both runs: only their RoI op differs
    module = build_module(cfg, datamodule.classes)
    (run / "checkpoints").mkdir(parents=True)
    checkpoint = {"hyper_parameters": dict(module.hparams), "state_dict": module.state_dict(),
                  "checkpoint_format": CHECKPOINT_FORMAT}
    torch.save(checkpoint, run / "checkpoints" / "last.ckpt")
    return run, module


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root, data = tmp_path_factory.mktemp("runs"), tmp_path_factory.mktemp("data")
    return [_make_run(root, roi, data) for roi in ("pool", "align")]


def test_load_run_rebuilds_the_runs_detector(runs):
    (run, module), _ = runs
    model, cfg = load_run(run)
    assert cfg.roi.name == "pool" and not model.training
    saved = module.model.state_dict()
    assert all(torch.equal(value, saved[key]) for key, value in model.state_dict().items())


def test_figure_rows_are_truth_then_each_runs_masks_by_image_id(runs, tmp_path):
    (pool_run, _), (align_run, _) = runs
    out = tmp_path / "figures" / "cmp.png"
    compare_predictions.main([str(pool_run), str(align_run), "--image-ids", "3", "1", "--score-thresh", "0",
                              "--out", str(out)])
    with Image.open(out) as im:
        width, height = im.size
    inches = compare_predictions.PANEL_INCHES
    assert (width, height) == (round(3 * inches * 100), round((2 * inches + compare_predictions.TITLE_INCHES) * 100))

    loaded = [load_run(pool_run), load_run(align_run)]
    samples, names = compare_predictions.val_images([(pool_run, loaded[0][1]), (align_run, loaded[1][1])], [3, 1])
    assert [target["image_id"] for _, target in samples] == [3, 1], "rows in the order of the given ids"
    rows = compare_predictions.panels([m for m, _ in loaded], samples, names, score_thresh=0.0)
    image, target = samples[0]
    with torch.no_grad():
        expected = [draw_truth(image, target, names)] + [
            draw_prediction(image, m([image])[0], names, 0.0) for m, _ in loaded]
    assert len(rows) == 2 and all(torch.equal(a, b) for a, b in zip(rows[0], expected, strict=True))
    assert not torch.equal(rows[0][1], rows[0][2]), "same weights, different RoI op: different masks"


def test_three_runs_are_three_columns_named_after_the_runs(runs, tmp_path, monkeypatch):
    (pool_run, _), (align_run, _) = runs
    monkeypatch.chdir(tmp_path)  # the default output goes to results/figures/ below the working directory
    compare_predictions.main([str(pool_run), str(align_run), str(pool_run), "--image-ids", "1"])
    out = tmp_path / "results" / "figures" / f"{pool_run.name}_vs_{align_run.name}_vs_{pool_run.name}.png"
    with Image.open(out) as im:
        assert im.size[0] == round(4 * compare_predictions.PANEL_INCHES * 100), "ground truth + one column a run"
    jpeg = tmp_path / "cmp.jpg"  # the committed form: same picture, JPEG-encoded
    compare_predictions.main([str(pool_run), str(align_run), str(pool_run), "--image-ids", "1", "--out", str(jpeg)])
    with Image.open(out) as png, Image.open(jpeg) as jpg:
        assert jpg.format == "JPEG" and jpg.size == png.size


def test_errors_name_the_file(runs, tmp_path, capsys):
    (pool_run, _), (align_run, _) = runs
    for args, message in [
        ([pool_run, align_run, "--image-ids", "999"], "image id(s) [999] not in "),
        ([pool_run, tmp_path / "nothing"], f"no checkpoint file at {tmp_path / 'nothing' / 'checkpoints'}"),
        ([pool_run], "give at least two run directories"),
    ]:
        with pytest.raises(SystemExit) as exit_info:
            compare_predictions.main([*map(str, args), "--out", str(tmp_path / "x.png")])
        assert exit_info.value.code == 2 and message in capsys.readouterr().err
    _, cfg = load_run(pool_run)
    other = cfg.copy()
    other.data.module.val_annotations = "/elsewhere/instances_val.json"
    with pytest.raises(compare_predictions.ComparisonError, match="were validated on different data"):
        compare_predictions.val_images([(pool_run, cfg), (align_run, other)], [1])


@pytest.mark.slow
def test_compare_reads_a_checkpoint_that_training_wrote(tmp_path):
    """The same, from the last.ckpt a (2-step) train.py run writes, not one assembled by hand."""
    from maskrcnn.training import train

    run = tmp_path / "smoke_pool_s0"
    cfg = compose_config("train", ["experiment=smoke", "roi=pool", f"paths.data_dir={tmp_path / 'data'}",
                                   f"paths.output_dir={run}", "trainer.max_steps=2", "trainer.val_check_interval=2"])
    train(cfg)
    out = tmp_path / "cmp.png"
    compare_predictions.main([str(run), str(run), "--image-ids", "1", "--out", str(out)])
    with Image.open(out) as im:
        assert im.size[0] == round(3 * compare_predictions.PANEL_INCHES * 100)


PLUGIN = '''
import torchvision
from torch import nn


class PlainAlign(nn.Module):
    def forward(self, feature, rois, output_size, spatial_scale):
        return torchvision.ops.roi_align(feature, rois, output_size, spatial_scale, 2, True)
'''


def test_a_run_of_a_user_extractor_loads_from_its_searchpath_folder(tmp_path):
    """The run imported its extractor's module through hydra.searchpath=[file://plugins] (relative to where it
    was started): load_run finds it there again, in a fresh process whose sys.path lacks it; without the run's
    hydra.yaml the module is not found and the error names it."""
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    module = f"plug_{tmp_path.name.replace('-', '_')}"
    (plugins / f"{module}.py").write_text(PLUGIN)
    run = tmp_path / "run"
    cfg = compose_config("train", ["experiment=smoke", f"roi._target_={module}.PlainAlign", "roi.name=plain",
                                   f"hydra.searchpath=[file://{plugins}]", f"paths.output_dir={run}"])  # fmt: skip
    model = build_module(cfg, [{"id": i, "name": f"c{i}"} for i in range(1, 4)])
    (run / "checkpoints").mkdir(parents=True)
    torch.save({"hyper_parameters": dict(model.hparams), "state_dict": model.state_dict(),
                "checkpoint_format": CHECKPOINT_FORMAT}, run / "checkpoints" / "last.ckpt")  # fmt: skip
    (run / ".hydra").mkdir()
    hydra = {"hydra": {"searchpath": ["file://plugins"], "runtime": {"cwd": str(tmp_path)}}}
    OmegaConf.save(hydra, run / ".hydra" / "hydra.yaml")  # the two keys of what train.py writes that matter here

    code = f"from maskrcnn.analysis.trained_run import load_run; print(load_run({str(run)!r})[1].roi.name)"
    repo = Path(__file__).resolve().parents[1]

    def load() -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-c", code], cwd=repo, capture_output=True, text=True, check=False)

    loaded = load()
    assert loaded.returncode == 0 and loaded.stdout.strip().splitlines()[-1] == "plain", loaded.stderr[-2000:]
    (run / ".hydra" / "hydra.yaml").unlink()
    failed = load()
    assert failed.returncode != 0 and f"{module}.PlainAlign" in failed.stderr, failed.stderr[-2000:]
