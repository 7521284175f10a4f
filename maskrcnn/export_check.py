"""An exported ONNX detector against the PyTorch model it came from, in onnxruntime: same detections?

Detections are matched, not compared row by row: two detections whose scores differ by float rounding only
may come out in either order. A PyTorch detection matches an unmatched ONNX one of the same label whose score
is within `score` and whose box corners are all within `box_px`; the closest box wins. The export equals the
model on an image when every detection on either side is matched and every matched pair's masks (binarized at
0.5, as COCO evaluation binarizes them) have an IoU of at least `mask_iou`, over the pixels that are not within
1e-4 of 0.5 (`mask_iou` says why).

One exception, a near tie: two detections whose scores differ by float rounding (`tie_score`) can swap their
ranks, and with them which one survives NMS (two same-class boxes overlapping by IoU >= `tie_iou`) or which one
makes the detections_per_img cut (both the lowest-scoring on their side). Such a pair, one left unmatched on
each side, counts as `near_tie_swaps`, not as a difference. On barely trained models it happens: the smoke
models' scores of 4e-4 put some pairs 1e-8 apart.

Shapes: D detections of an image of H x W pixels.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from maskrcnn.export_model import OUTPUT_NAMES


@dataclass(frozen=True)
class Tolerances:
    box_px: float = 0.5
    score: float = 1e-3
    mask_iou: float = 0.99
    tie_score: float = 1e-5  # a near tie (module docstring): 100x the scores' differences between the runtimes
    tie_iou: float = 0.5


UNDECIDED = 1e-4  # mask pixels this close to 0.5 are left out of the IoU (`mask_iou`)


class ExportCheckError(RuntimeError):
    """The ONNX model's detections differ from PyTorch's beyond the tolerances."""


def onnx_session(model: str | Path | bytes):
    """An onnxruntime CPU session of an ONNX model (a file, or its bytes)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only: onnxruntime warns about unused initializers and the like
    source = model if isinstance(model, bytes) else str(model)
    return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])


def onnx_detections(session, image: Tensor) -> dict[str, np.ndarray]:
    """image Float[3, H, W] -> {"boxes", "labels", "scores", "masks"} from onnxruntime."""
    outputs = session.run(list(OUTPUT_NAMES), {"image": image.numpy()})
    return dict(zip(OUTPUT_NAMES, outputs, strict=True))


def torch_detections(model: nn.Module, image: Tensor) -> dict[str, np.ndarray]:
    """The PyTorch MaskRCNN's detections for [image] (eval mode), as numpy arrays."""
    with torch.inference_mode():
        found = model.eval()([image])[0]
    return {key: found[key].numpy() for key in OUTPUT_NAMES}


def compare(ours: dict[str, np.ndarray], exported: dict[str, np.ndarray], tol: Tolerances = Tolerances()) -> dict:
    """-> a summary: counts, matched pairs, near-tie swaps, the largest box and score differences and the
    smallest mask IoU over the matched pairs, and `equal` (every detection matched within the tolerances, or
    in a near-tie swap)."""
    n, m = len(ours["scores"]), len(exported["scores"])
    taken = np.zeros(m, dtype=bool)
    pairs = []
    for i in range(n):
        candidates = np.flatnonzero(
            ~taken
            & (exported["labels"] == ours["labels"][i])
            & (np.abs(exported["scores"] - ours["scores"][i]) <= tol.score)
        )
        if len(candidates) == 0:
            continue
        box_diff = np.abs(exported["boxes"][candidates] - ours["boxes"][i]).max(axis=1)
        best = int(np.argmin(box_diff))
        if box_diff[best] <= tol.box_px:
            taken[candidates[best]] = True
            pairs.append((i, int(candidates[best])))
    ties = _near_tie_swaps(ours, exported, {i for i, _ in pairs}, {j for _, j in pairs}, tol)
    box = max((float(np.abs(exported["boxes"][j] - ours["boxes"][i]).max()) for i, j in pairs), default=0.0)
    score = max((abs(float(exported["scores"][j] - ours["scores"][i])) for i, j in pairs), default=0.0)
    iou = min((mask_iou(ours["masks"][i], exported["masks"][j]) for i, j in pairs), default=1.0)
    return {
        "detections": n,
        "onnx_detections": m,
        "matched": len(pairs),
        "near_tie_swaps": ties,
        "max_box_diff_px": box,
        "max_score_diff": score,
        "min_mask_iou": iou,
        "equal": len(pairs) + ties == n == m and iou >= tol.mask_iou,
    }


def _near_tie_swaps(ours: dict, exported: dict, matched_ours: set, matched_exported: set, tol: Tolerances) -> int:
    """Pairs of unmatched detections, one on each side, that are a near tie (module docstring)."""
    lowest = [min(side["scores"], default=0.0) for side in (ours, exported)]
    left = [j for j in range(len(exported["scores"])) if j not in matched_exported]
    swaps = 0
    for i in (i for i in range(len(ours["scores"])) if i not in matched_ours):
        for j in left:
            if abs(float(ours["scores"][i] - exported["scores"][j])) > tol.tie_score:
                continue
            same_class = ours["labels"][i] == exported["labels"][j]
            suppressed = same_class and box_iou(ours["boxes"][i], exported["boxes"][j]) >= tol.tie_iou
            cut = max(ours["scores"][i] - lowest[0], exported["scores"][j] - lowest[1]) <= tol.tie_score
            if suppressed or cut:
                left.remove(j)
                swaps += 1
                break
    return swaps


def box_iou(a: np.ndarray, b: np.ndarray) -> float:
    """IoU of two boxes (x1, y1, x2, y2)."""
    w = max(0.0, float(min(a[2], b[2]) - max(a[0], b[0])))
    h = max(0.0, float(min(a[3], b[3]) - max(a[1], b[1])))
    union = float((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1])) - w * h
    return w * h / union if union > 0 else 0.0


def mask_iou(ours: np.ndarray, exported: np.ndarray, undecided: float = UNDECIDED) -> float:
    """IoU of two probability masks [1, H, W] binarized at 0.5 (1.0 when both are empty), leaving out the pixels
    whose probability in `ours` is within `undecided` of 0.5: float rounding, not the model, puts those on one
    side or the other (a barely trained model's masks hover at 0.5, and a 4-pixel mask that loses one has an
    IoU of 0.75)."""
    decided = np.abs(ours - 0.5) > undecided
    a, b = (ours > 0.5) & decided, (exported > 0.5) & decided
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 1.0


def check_export(path: str | Path, model: nn.Module, images: list[Tensor], tol: Tolerances = Tolerances()) -> list:
    """Runs the ONNX file and the PyTorch model on each image; -> one `compare` summary (plus "image_size") per
    image. Raises ExportCheckError when an image's detections differ."""
    session = onnx_session(path)
    results = []
    for image in images:
        result = {"image_size": list(image.shape[-2:]),
                  **compare(torch_detections(model, image), onnx_detections(session, image), tol)}  # fmt: skip
        results.append(result)
        if not result["equal"]:
            raise ExportCheckError(
                f"{path}: onnxruntime's detections differ from PyTorch's on a {result['image_size']} image: {result} "
                f"(tolerances: {tol})"
            )
    return results
