"""The PR curves a run logged to TensorBoard, read back from its event files and drawn as one picture.

    python -m maskrcnn.analysis.pr_curves RUN_DIR/tensorboard [--step N] [--out results/figures/pr_curves.png]

train.py (at each validation) and evaluate.py log COCOeval's precision-recall curves as TensorBoard PR curves,
pr/<bbox|segm>_iou<50|75>. This reads them from the event files under the given folder (the last validation,
or --step) and draws the four curves in a 1x2 grid, as TensorBoard's PR-curves tab shows them, with each
curve's mean precision (COCO's AP at that IoU) in the legend.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.util import tensor_util

TAG_PREFIX = "pr/"


@dataclass
class LoggedPRCurve:
    """One logged curve. recall, precision: Float[R], recall falling, as the PR-curve plugin stores them."""

    tag: str
    step: int
    recall: np.ndarray
    precision: np.ndarray
    true_positives: np.ndarray
    false_negatives: np.ndarray


def read_pr_curves(event_dir: Path, step: int | None = None) -> dict[str, LoggedPRCurve]:
    """Every pr/* curve under `event_dir` at `step` (default: the last step each was logged at), by tag."""
    if not Path(event_dir).is_dir():
        raise FileNotFoundError(f"{event_dir}: no such TensorBoard folder")
    accumulator = EventAccumulator(str(event_dir), size_guidance={"tensors": 0})
    accumulator.Reload()
    curves = {}
    for tag in sorted(t for t in accumulator.Tags()["tensors"] if t.startswith(TAG_PREFIX)):
        events = accumulator.Tensors(tag)
        chosen = [e for e in events if step is None or e.step == step]
        if not chosen:
            raise ValueError(f"{event_dir}: {tag} was not logged at step {step} (steps: {[e.step for e in events]})")
        event = chosen[-1]
        tp, _fp, _tn, fn, precision, recall = tensor_util.make_ndarray(event.tensor_proto)
        curves[tag] = LoggedPRCurve(tag, event.step, recall, precision, tp, fn)
    if not curves:
        raise ValueError(f"{event_dir}: no {TAG_PREFIX}* PR curves in its event files (logged by train.py's "
                         "validation and by evaluate.py)")  # fmt: skip
    return curves


def draw(curves: dict[str, LoggedPRCurve], title: str, out: Path) -> None:
    """bbox and segm side by side, IoU 0.5 and 0.75 in each."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 4), sharey=True)
    for ax, kind in zip(axes, ("bbox", "segm"), strict=True):
        for curve in (c for tag, c in curves.items() if tag.startswith(f"{TAG_PREFIX}{kind}_")):
            iou = curve.tag.rsplit("_iou", 1)[-1]
            ax.plot(curve.recall, curve.precision, label=f"IoU 0.{iou}: AP{iou} {100 * curve.precision.mean():.1f}")
        ax.set(title=kind, xlabel="recall", xlim=(0, 1), ylim=(0, 1.02))
        ax.grid(alpha=0.3)
        ax.legend(loc="lower left")
    axes[0].set_ylabel("precision (COCO interpolated, mean over classes)")
    fig.suptitle(title)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("event_dir", type=Path, help="a run's tensorboard/ folder")
    parser.add_argument("--step", type=int, default=None, help="the validation step to draw (default: the last)")
    parser.add_argument("--title", default=None, help="figure title (default: the folder)")
    parser.add_argument("--out", type=Path, default=Path("results/figures/pr_curves.png"))
    args = parser.parse_args(argv)
    curves = read_pr_curves(args.event_dir, args.step)
    steps = sorted({c.step for c in curves.values()})
    draw(curves, args.title or f"{args.event_dir} (step {', '.join(map(str, steps))})", args.out)
    for curve in curves.values():
        print(f"{curve.tag} step {curve.step}: mean precision {curve.precision.mean():.4f}")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
