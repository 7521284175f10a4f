"""ONNX export (python -m maskrcnn.export): exported smoke models in onnxruntime equal PyTorch; refusals say why.

One smoke-trained checkpoint (roi=align, 8 steps) is shared by the end-to-end tests. The align_max and pool
checkpoints are that checkpoint with another `roi` config: the RoI op has no weights, so the models differ only
in the op, and the export of each op is what is tested. The refusals need no training: an untrained model.
"""

import io
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from omegaconf import OmegaConf
from torchvision.models.detection.roi_heads import paste_masks_in_image
from torchvision.models.detection.transform import GeneralizedRCNNTransform

import ops
from maskrcnn.checkpoints import read_checkpoint
from maskrcnn.config import compose_config
from maskrcnn.export import export, export_onnx, synthetic_image
from maskrcnn.export_check import compare, onnx_detections, onnx_session, torch_detections
from maskrcnn.export_model import ExportableMaskRCNN, resize_image
from maskrcnn.export_paste import paste_masks
from maskrcnn.trained_model import load_detector
from roi_heads import RoIFeatureOp, RoIOp, TorchvisionRoIOp
from roi_heads.contract import as_op
from roi_heads.export_ops import ExportRefusedError, MaxRoiPool, RoiAlignAvg, export_op, roi_align_max

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

REPO = Path(__file__).resolve().parents[1]
TEST_IMAGE = (97, 150)  # H, W: neither the export image's size (128 x 128) nor the check's (131 x 123)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """{roi name: checkpoint path}: a smoke run of roi=align (8 steps), and copies with another `roi` config."""
    from maskrcnn.training import train

    root = tmp_path_factory.mktemp("export")
    out = root / "align"
    train(compose_config("train", ["experiment=smoke", "roi=align", f"paths.data_dir={root / 'data'}",
                                   f"paths.output_dir={out}", "trainer.max_steps=8", "trainer.val_check_interval=8",
                                   "trainer.enable_progress_bar=false"]))  # fmt: skip
    paths = {"align": out / "checkpoints" / "last.ckpt"}
    for name in ("align_max", "pool"):
        paths[name] = _with_roi(paths["align"], name, root / f"{name}.ckpt")
    return paths


@pytest.fixture(scope="module")
def untrained(untrained_checkpoint):
    """An untrained smoke-size roi=align checkpoint, saved as train.py saves it."""
    return untrained_checkpoint


def _with_roi(checkpoint, roi_name, path):
    """A copy of `checkpoint` at `path` whose `roi` config is configs/roi/<roi_name>.yaml."""
    saved = read_checkpoint(checkpoint)
    saved["hyper_parameters"]["roi"] = OmegaConf.to_container(compose_config("train", [f"roi={roi_name}"]).roi)
    torch.save(saved, path)
    return path


def _export_cfg(checkpoint, output, *overrides):
    # score_thresh=0: a barely trained model scores below the default 0.05; its best 100 detections are compared.
    return compose_config("export", [f"ckpt_path={checkpoint}", f"output={output}", "score_thresh=0.0",
                                     *overrides])  # fmt: skip


def _nodes(path) -> list:
    return list(onnx.load(str(path)).graph.node)


@pytest.mark.slow
@pytest.mark.parametrize("roi", ["align", "align_max", "pool"])
def test_exported_detector_equals_pytorch_on_an_image_of_another_size(checkpoints, tmp_path, roi):
    check = roi == "align"  # the command's own check (two more images) once; the test compares below anyway
    summary = export(_export_cfg(checkpoints[roi], tmp_path / "model.onnx", f"check={check}"))
    if check:
        assert [c["equal"] for c in summary["check"]] == [True, True]
        assert all(c["detections"] == 100 for c in summary["check"])
    image = synthetic_image(*TEST_IMAGE, seed=3)
    model = load_detector(checkpoints[roi])[0].model
    model.roi_heads.score_thresh = 0.0
    ours = torch_detections(model, image)
    exported = onnx_detections(onnx_session(tmp_path / "model.onnx"), image)
    assert exported["masks"].shape[-2:] == TEST_IMAGE
    result = compare(ours, exported)  # labels equal, boxes within 0.5 px, scores within 1e-3
    assert result["detections"] == 100, "a comparison of a few detections would mean little"
    assert result["equal"], result
    assert result["min_mask_iou"] >= 0.99

    nodes = _nodes(tmp_path / "model.onnx")
    assert {n.domain for n in nodes} <= {"", "ai.onnx"}, "standard ONNX operators only"
    ops_used = {n.op_type for n in nodes}
    if roi == "align":
        settings = {(attrs["coordinate_transformation_mode"], attrs["mode"], attrs["sampling_ratio"])
                    for attrs in ({a.name: onnx.helper.get_attribute_value(a) for a in n.attribute}
                                  for n in nodes if n.op_type == "RoiAlign")}  # fmt: skip
        assert settings == {(b"half_pixel", b"avg", 2)}
    elif roi == "align_max":
        assert "RoiAlign" not in ops_used, "onnxruntime's max mode is not ours"
    else:
        assert "MaxRoiPool" in ops_used and "RoiAlign" not in ops_used
    props = {p.key: p.value for p in onnx.load(str(tmp_path / "model.onnx")).metadata_props}
    assert '"name": "circle"' in props["roi_gap.classes"] and props["roi_gap.score_thresh"] == "0.0"


def test_warp_is_refused_saying_why_and_what_to_do(untrained, tmp_path):
    checkpoint = _with_roi(untrained, "warp", tmp_path / "warp.ckpt")
    with pytest.raises(ExportRefusedError, match=r"roi=warp \(RoIWarp\) cannot be exported to ONNX: ONNX has no "
                                                 r"operator for it.*Export a model trained with roi=align"):
        export(_export_cfg(checkpoint, tmp_path / "warp.onnx"))
    assert not (tmp_path / "warp.onnx").exists()


def test_max_over_adaptive_sampling_is_refused(untrained):
    model = load_detector(untrained)[0].model
    model.roi_heads.box_extractor.op = model.roi_heads.mask_extractor.op = RoIOp("align", "max", True, 0)
    with pytest.raises(ExportRefusedError, match=r"needs a fixed number of samples per bin \(sampling_ratio > 0\)"):
        ExportableMaskRCNN(model, "align_max_adaptive")


def test_cli_refusal_is_one_line_without_a_traceback(untrained, tmp_path):
    checkpoint = _with_roi(untrained, "warp", tmp_path / "warp.ckpt")
    done = subprocess.run(
        [sys.executable, "-m", "maskrcnn.export", f"ckpt_path={checkpoint}", f"output={tmp_path / 'w.onnx'}",
         f"hydra.run.dir={tmp_path / 'run'}"],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 1
    assert "error: roi=warp (RoIWarp) cannot be exported to ONNX" in done.stderr
    assert "Traceback" not in done.stderr


class UserRoIAlign(RoIFeatureOp):
    """A user's extractor op (torchvision's RoIAlign), as roi._target_ plugs it in."""

    def forward(self, feature, rois, output_size, spatial_scale):
        return torchvision.ops.roi_align(feature, rois, output_size, spatial_scale, 2, True)


class ExportableUserRoIAlign(UserRoIAlign):
    def onnx_export_op(self):
        """torchvision.ops.roi_align traces to ONNX RoiAlign (torchvision registers its symbolic)."""
        return lambda feature, rois, size, scale: torchvision.ops.roi_align(feature, rois, size, scale, 2, True)


class PlainUserOp:
    """A plain callable op (the model wraps it in roi_heads.contract.PlainOp), with its export hook."""

    def __call__(self, feature, rois, output_size, spatial_scale):
        return torchvision.ops.roi_align(feature, rois, output_size, spatial_scale, 2, True)

    def onnx_export_op(self):
        return self


class UserPooler(torchvision.ops.MultiScaleRoIAlign):
    """A user's torchvision-style pooler (roi._target_ with featmap_names / output_size)."""


class ExportableUserPooler(UserPooler):
    def onnx_export_op(self):
        """torchvision's MultiScaleRoIAlign traces to ONNX (per-level RoiAlign, merged by a scatter)."""
        return self


def _with_extractor(checkpoint, op=None, pooler=None):
    """The checkpoint's model with its extractors' op replaced by `op`, or its extractors by `pooler`s built
    as the model builds them (pooler(featmap_names=..., output_size=S))."""
    model = load_detector(checkpoint)[0].model
    heads = model.roi_heads
    for branch in ("box_extractor", "mask_extractor"):
        extractor = getattr(heads, branch)
        if op is not None:
            extractor.op = as_op(op)
        else:
            setattr(heads, branch, pooler(featmap_names=extractor.featmap_names, output_size=extractor.output_size,
                                          sampling_ratio=2))  # fmt: skip
    heads.score_thresh = 0.0
    return model


def test_user_extractors_are_refused_without_their_export_hook(untrained):
    with pytest.raises(ExportRefusedError, match=r"RoI extractor test_export\.UserRoIAlign.*onnx_export_op"):
        ExportableMaskRCNN(_with_extractor(untrained, op=UserRoIAlign()))
    with pytest.raises(ExportRefusedError, match=r"RoI pooler test_export\.UserPooler.*onnx_export_op"):
        ExportableMaskRCNN(_with_extractor(untrained, pooler=UserPooler))


def test_export_hooks_are_found_on_wrapped_ops_and_torchvision_ops_export_as_ours():
    stand_in = export_op(as_op(PlainUserOp()))  # PlainOp(PlainUserOp): the hook of the op inside
    assert isinstance(stand_in.single, PlainUserOp)
    assert isinstance(export_op(TorchvisionRoIOp("align", aligned=False, sampling_ratio=0)).single, RoiAlignAvg)
    assert isinstance(export_op(TorchvisionRoIOp("pool")).single, MaxRoiPool)


@pytest.mark.slow
@pytest.mark.parametrize("form", ["op", "pooler"])
def test_user_extractor_exports_through_its_hook(checkpoints, tmp_path, form):
    if form == "op":
        model = _with_extractor(checkpoints["align"], op=ExportableUserRoIAlign())
    else:
        model = _with_extractor(checkpoints["align"], pooler=ExportableUserPooler)
    export_onnx(ExportableMaskRCNN(model), synthetic_image(128, 128), tmp_path / "user.onnx")
    image = synthetic_image(*TEST_IMAGE, seed=3)
    result = compare(torch_detections(model, image), onnx_detections(onnx_session(tmp_path / "user.onnx"), image))
    assert result["detections"] == 100 and result["equal"], result


def test_comparison_excuses_near_tie_swaps_only():
    """Two same-class boxes overlapping by IoU 0.6 with scores 1e-8 apart: which survives NMS is float rounding's
    choice. A detection 1e-3 away, or one that does not overlap, is a difference."""
    masks = np.zeros((3, 1, 8, 8), dtype=np.float32)
    ours = {"boxes": np.array([[0, 0, 50, 50], [60, 60, 90, 90], [0, 30, 10, 60]], dtype=np.float32),
            "labels": np.array([1, 2, 4]), "scores": np.array([0.9, 0.5, 0.3], dtype=np.float32), "masks": masks}
    swapped = {**ours, "boxes": ours["boxes"].copy(), "scores": ours["scores"].copy()}
    swapped["boxes"][2] = [0, 25, 12, 62]  # IoU 0.61 with ours
    swapped["scores"][2] += 1e-8
    result = compare(ours, swapped)
    assert result["equal"] and (result["matched"], result["near_tie_swaps"]) == (2, 1)
    swapped["scores"][2] = 0.301
    assert not compare(ours, swapped)["equal"]
    swapped["scores"][2], swapped["boxes"][2] = 0.3, [40, 0, 49, 9]  # the lowest on both sides: a top-k cut
    assert compare(ours, swapped)["near_tie_swaps"] == 1
    swapped["labels"] = np.array([1, 3, 4])  # not a tie: a different class at 0.5
    assert not compare(ours, swapped)["equal"]


def _tiny_export(module, inputs, dynamic_axes):
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, inputs, buffer, dynamo=False, opset_version=17,
                          input_names=list(dynamic_axes), dynamic_axes=dynamic_axes)  # fmt: skip
    return onnx_session(buffer.getvalue())


def _rois(count, seed, n=2, h=24, w=20, stride=8):
    g = torch.Generator().manual_seed(seed)
    corner = torch.rand(count, 2, generator=g) * torch.tensor([w * 1.2, h * 1.2]) * stride - 16
    sides = torch.rand(count, 2, generator=g) * 100 + 0.5
    sides[:10] *= -0.05  # a few inverted boxes
    return torch.cat([torch.randint(0, n, (count, 1), generator=g).float(), corner, corner + sides], dim=1)


class _MaxOp(torch.nn.Module):
    def __init__(self, aligned, sampling_ratio):
        super().__init__()
        self.aligned, self.sampling_ratio = aligned, sampling_ratio

    def forward(self, maps, rois):
        return roi_align_max(maps, rois, 7, 1 / 8, self.sampling_ratio, self.aligned)


@pytest.mark.parametrize(("aligned", "sampling_ratio"), [(True, 2), (False, 2), (True, 1), (False, 3)])
def test_exported_max_roi_align_equals_ours(aligned, sampling_ratio):
    maps = torch.randn(2, 8, 24, 20, generator=torch.Generator().manual_seed(1))
    rois = _rois(200, seed=2)
    ours = ops.roi_align(maps, rois, 7, 1 / 8, sampling_ratio, aligned, "max")
    assert torch.equal(roi_align_max(maps, rois, 7, 1 / 8, sampling_ratio, aligned), ours)
    session = _tiny_export(_MaxOp(aligned, sampling_ratio), (maps, rois), {"maps": [0, 2, 3], "rois": [0]})
    for count in (200, 0):  # no RoIs: an FPN level that gets none
        (got,) = session.run(None, {"maps": maps.numpy(), "rois": rois[:count].numpy()})
        np.testing.assert_allclose(got, ours[:count].numpy(), rtol=0, atol=1e-5)


def test_onnxruntime_max_mode_differs_from_ours_and_the_rest_matches():
    """The facts the README states (bench/onnx_roi_ops.py measures them)."""
    from bench.onnx_roi_ops import measure

    rows = {(r["onnx"], r.get("aligned"), r.get("sampling_ratio")): r for r in measure()}
    for aligned in (True, False):
        for sampling_ratio in (2, 0):
            assert rows["RoiAlign mode=avg", aligned, sampling_ratio]["max_abs_diff"] < 1e-5
            assert rows["RoiAlign mode=max", aligned, sampling_ratio]["fraction_over_1e-5"] > 0.3
        max_row = rows["RoiAlign mode=max", aligned, 2]
        assert max_row["onnxruntime_vs_its_model_max_abs_diff"] < 1e-5  # max_i(w_i v_i), as read from its kernel
        assert max_row["export_max_formulation"]["max_abs_diff"] < 1e-5
    assert rows["MaxRoiPool", None, None]["max_abs_diff"] == 0.0


class _Resize(torch.nn.Module):
    def forward(self, image):
        return resize_image(image, 800, 1333)


def test_exported_resize_has_pytorchs_size_and_values():
    """torchvision's traced resize computes the size in float32: in onnxruntime it resizes 300 x 652 to 613 x 1332,
    PyTorch to 613 x 1333."""
    session = _tiny_export(_Resize(), (torch.rand(3, 64, 80),), {"image": [1, 2]})
    transform = GeneralizedRCNNTransform(800, 1333, [0.0] * 3, [1.0] * 3)
    g = torch.Generator().manual_seed(0)
    for h, w in [(300, 652), (300, 751), (150, 200), (97, 131), (1000, 3000), (480, 640)]:
        image = torch.rand(3, h, w, generator=g)
        expected = transform.eval()([image])[0]
        size = expected.image_sizes[0]
        (got,) = session.run(None, {"image": image.numpy()})
        assert got.shape[-2:] == tuple(size)
        np.testing.assert_allclose(got, expected.tensors[0, :, : size[0], : size[1]].numpy(), rtol=0, atol=2e-6)


def test_paste_equals_torchvisions():
    g = torch.Generator().manual_seed(0)
    masks = torch.rand(40, 1, 28, 28, generator=g)
    corner = torch.rand(40, 2, generator=g) * 140 - 20
    boxes = torch.cat([corner, corner + torch.rand(40, 2, generator=g) * 80 + 0.2], dim=1)
    boxes = torchvision.ops.clip_boxes_to_image(boxes, (97, 131))  # as detections are (torchvision's paste fails
    boxes = boxes[torchvision.ops.remove_small_boxes(boxes, 1e-2)]  # on boxes wholly outside the image)
    masks = masks[: len(boxes)]
    expected = paste_masks_in_image(masks, boxes, (97, 131))
    got = paste_masks(masks, boxes, torch.tensor(97), torch.tensor(131))
    assert got.shape == expected.shape == (len(boxes), 1, 97, 131) and len(boxes) > 30
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)
