"""onnxruntime's RoI operators against ours: which ONNX operator the export may use for which `roi=` variant.

Each ONNX operator runs alone (a one-node graph built with onnx.helper, independent of torch's exporter) in
onnxruntime's CPU provider, on one random workload, and is compared with our op on the same inputs:

* RoiAlign mode=avg, coordinate_transformation_mode half_pixel (aligned=True) / output_half_pixel
  (aligned=False), sampling_ratio 2 and 0 (adaptive: ceil(roi_size / pooled_size) in both), vs ops.roi_align;
* RoiAlign mode=max, the same four settings, vs ops.roi_align(pool_mode="max"); plus a model of what
  onnxruntime computes (per bin, the max over samples of max_i(w_i v_i), the largest weighted neighbour
  term, instead of the interpolated sum_i w_i v_i; outside samples 0), to show that this is the difference;
* MaxRoiPool vs ops.roi_pool;
* the export's own max formulation (roi_heads.export_ops.roi_align_max), traced by torch.onnx.export, vs
  ops.roi_align(pool_mode="max").

The workload: 2 maps 8 x 24 x 20 (stride 8, a 192 x 160 px image), 300 RoIs of 0.5-100 px sides at random
places, some partly or wholly outside the image, output 7 x 7. Differences: max and mean |diff| over all
outputs and the fraction of outputs that differ by more than 1e-5.

    python -m bench.onnx_roi_ops           # writes bench/results/onnx_roi_ops.json
"""

from __future__ import annotations

import argparse
import io
import platform
import warnings
from pathlib import Path

import numpy as np
import torch

import ops
from bench.report import write_json
from roi_heads.export_ops import RoiAlignMax, max_per_bin, weighted_neighbours

RESULTS = Path(__file__).resolve().parent / "results"
SIZE, SCALE = 7, 1.0 / 8


def workload(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(maps [2, 8, 24, 20], rois [300, 5]) in image pixels."""
    g = torch.Generator().manual_seed(seed)
    n, c, h, w, k = 2, 8, 24, 20, 300
    maps = torch.randn(n, c, h, w, generator=g)
    corner = torch.rand(k, 2, generator=g) * torch.tensor([w * 1.2, h * 1.2]) / SCALE - 16
    sides = torch.rand(k, 2, generator=g) * 100 + 0.5
    rois = torch.cat([torch.randint(0, n, (k, 1), generator=g).float(), corner, corner + sides], dim=1)
    return maps, rois


def run_node(op_type: str, inputs: list[np.ndarray], **attributes) -> np.ndarray:
    """One ONNX node (opset 17) on `inputs` in onnxruntime's CPU provider."""
    import onnxruntime as ort
    from onnx import TensorProto, helper

    dtypes = {np.dtype(np.float32): TensorProto.FLOAT, np.dtype(np.int64): TensorProto.INT64}
    names = [f"x{i}" for i in range(len(inputs))]
    graph = helper.make_graph(
        [helper.make_node(op_type, names, ["y"], **attributes)],
        op_type,
        [helper.make_tensor_value_info(n, dtypes[a.dtype], list(a.shape)) for n, a in zip(names, inputs, strict=True)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, dict(zip(names, inputs, strict=True)))[0]


def difference(got: np.ndarray, ours: torch.Tensor) -> dict[str, float]:
    diff = np.abs(got - ours.numpy())
    return {"max_abs_diff": float(diff.max()), "mean_abs_diff": float(diff.mean()),
            "fraction_over_1e-5": float((diff > 1e-5).mean()), "max_abs_ours": float(ours.abs().max())}  # fmt: skip


def ort_max_model(maps: torch.Tensor, rois: torch.Tensor, sampling_ratio: int, aligned: bool) -> torch.Tensor:
    """What onnxruntime's RoiAlign max mode computes, per our reading of its kernel: per bin, the max over the
    samples of max(w1 v1, w2 v2, w3 v3, w4 v4), 0 for an outside sample -> [R, C, S, S]."""
    (t1, t2, t3, t4), outside = weighted_neighbours(maps, rois, SIZE, SCALE, sampling_ratio, aligned)
    largest = torch.maximum(torch.maximum(torch.maximum(t1, t2), t3), t4)
    return max_per_bin(torch.where(outside, torch.zeros_like(largest), largest), sampling_ratio)


def exported_max(maps: torch.Tensor, rois: torch.Tensor, sampling_ratio: int, aligned: bool) -> np.ndarray:
    """roi_heads.export_ops.RoiAlignMax through torch.onnx.export (dynamo=False, opset 17) and onnxruntime."""
    import onnxruntime as ort

    class Op(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.op = RoiAlignMax(aligned, sampling_ratio)

        def forward(self, maps, rois):
            return self.op(maps, rois, SIZE, SCALE)

    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the legacy exporter's deprecation notice
        torch.onnx.export(Op(), (maps, rois), buffer, dynamo=False, opset_version=17, input_names=["maps", "rois"],
                          dynamic_axes={"maps": [0, 2, 3], "rois": [0]})  # fmt: skip
    session = ort.InferenceSession(buffer.getvalue(), providers=["CPUExecutionProvider"])
    return session.run(None, {"maps": maps.numpy(), "rois": rois.numpy()})[0]


def measure(seed: int = 0) -> list[dict]:
    maps, rois = workload(seed)
    boxes, batch = rois[:, 1:].numpy().copy(), rois[:, 0].to(torch.int64).numpy()
    rows = []
    for mode in ("avg", "max"):
        for aligned in (True, False):
            for sampling_ratio in (2, 0):
                ours = ops.roi_align(maps, rois, SIZE, SCALE, sampling_ratio, aligned, mode)
                transform = "half_pixel" if aligned else "output_half_pixel"
                got = run_node("RoiAlign", [maps.numpy(), boxes, batch], mode=mode, output_height=SIZE,
                               output_width=SIZE, sampling_ratio=sampling_ratio, spatial_scale=SCALE,
                               coordinate_transformation_mode=transform)  # fmt: skip
                row = {"onnx": f"RoiAlign mode={mode}", "ours": f"roi_align pool_mode={mode}", "aligned": aligned,
                       "sampling_ratio": sampling_ratio, **difference(got, ours)}  # fmt: skip
                if mode == "max" and sampling_ratio > 0:
                    model = ort_max_model(maps, rois, sampling_ratio, aligned)
                    row["onnxruntime_vs_its_model_max_abs_diff"] = float(np.abs(got - model.numpy()).max())
                    row["export_max_formulation"] = difference(exported_max(maps, rois, sampling_ratio, aligned), ours)
                rows.append(row)
    got = run_node("MaxRoiPool", [maps.numpy(), rois.numpy()], pooled_shape=[SIZE, SIZE], spatial_scale=SCALE)
    rows.append({"onnx": "MaxRoiPool", "ours": "roi_pool", **difference(got, ops.roi_pool(maps, rois, SIZE, SCALE))})
    return rows


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=str(RESULTS / "onnx_roi_ops.json"))
    args = parser.parse_args(argv)
    import onnx
    import onnxruntime

    record = {
        "command": "python -m bench.onnx_roi_ops",
        "workload": "2 maps 8x24x20 (stride 8), 300 rois of 0.5-100 px sides, some outside the image, output 7x7",
        "versions": {"torch": torch.__version__, "onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__,
                     "python": platform.python_version()},  # fmt: skip
        "machine": platform.processor() or platform.machine(),
        "results": measure(args.seed),
    }
    for row in record["results"]:
        print({k: v for k, v in row.items() if k != "export_max_formulation"})
    write_json(Path(args.out), record)
    return record


if __name__ == "__main__":
    main()
