"""The gap, visible: ground truth | run A's predicted masks | run B's | ..., on the same val images chosen by id.

    python -m maskrcnn.analysis.compare_predictions RUN_A RUN_B [RUN ...] [--image-ids ID ...] [--score-thresh 0.5]
        [--out PNG|JPG]

The runs are train.py run directories, typically RoIPool, RoIAlign and other variants of one setting and seed.
Every trained detector (checkpoints/last.ckpt) runs on the val images with the given ids, read through RUN_A's
data config (all runs must have used the same val annotations). The ids are fixed in advance (the default
list below), never picked after looking at the predictions. One row per image; detections scoring at least
--score-thresh are drawn with their masks, boxes and scores, in the class colours of maskrcnn.viz.
Writes results/figures/<RUN_A name>_vs_<RUN_B name>[_vs_...].png unless --out says otherwise.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from omegaconf import DictConfig
from torch import Tensor

from maskrcnn.analysis.trained_run import load_run
from maskrcnn.checkpoints import CheckpointError
from maskrcnn.data.coco import CocoInstances, DatasetNotFoundError
from maskrcnn.detector import MaskRCNN
from maskrcnn.viz import draw_prediction, draw_truth

DEFAULT_IMAGE_IDS = (1, 2, 3, 4)  # the first images of the shapes val split (ids 1..num_val), fixed up front
PANEL_INCHES, DPI, TITLE_INCHES = 3.2, 100, 0.5


class ComparisonError(ValueError):
    """Runs that cannot be compared, or image ids not in their val data; the message names the run or file."""


def val_images(
    runs: list[tuple[Path, DictConfig]], image_ids: list[int]
) -> tuple[list[tuple[Tensor, dict]], list[str]]:
    """[(image Float[3, H, W], target)] for `image_ids`, in that order, and the class names, from the first run's
    data config after checking that every run used the same val annotations."""
    (first_dir, first), *others = runs
    annotations = first.data.module.val_annotations
    for run_dir, cfg in others:
        if cfg.data.module.val_annotations != annotations:
            raise ComparisonError(f"{first_dir} and {run_dir} were validated on different data: {annotations} vs "
                                  f"{cfg.data.module.val_annotations}")
    try:
        dataset = CocoInstances(first.data.module.val_images, annotations)
    except DatasetNotFoundError as e:
        raise ComparisonError(f"{first_dir}: the val data its config names is not there (a relative path is "
                              f"relative to where the run trained; run this command from there): {e}") from e
    index = {int(image_id): k for k, image_id in enumerate(dataset.image_ids)}
    missing = [i for i in image_ids if i not in index]
    if missing:
        raise ComparisonError(f"image id(s) {missing} not in {annotations}; its first ids are "
                              f"{sorted(index)[:8]} (pass --image-ids)")
    return [dataset[index[i]] for i in image_ids], dataset.category_names


@torch.no_grad()
def panels(models: list[MaskRCNN], samples: list[tuple[Tensor, dict]], class_names: list[str],
           score_thresh: float) -> list[list[Tensor]]:
    """One row per sample: [ground truth, one drawing per model], each UInt8[3, H, W]."""
    rows = []
    for image, target in samples:
        drawn = [draw_prediction(image, model([image])[0], class_names, score_thresh) for model in models]
        rows.append([draw_truth(image, target, class_names), *drawn])
    return rows


def save_figure(rows: list[list[Tensor]], titles: list[str], row_labels: list[str], path: Path) -> Path:
    """A grid of the panels, one titled column each, at PANEL_INCHES per panel and DPI."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n_rows, n_cols = len(rows), len(titles)
    fig, axes = plt.subplots(n_rows, n_cols, squeeze=False, dpi=DPI,
                             figsize=(n_cols * PANEL_INCHES, n_rows * PANEL_INCHES + TITLE_INCHES))
    for r, (row, label) in enumerate(zip(rows, row_labels, strict=True)):
        for c, panel in enumerate(row):
            ax = axes[r][c]
            ax.imshow(panel.permute(1, 2, 0).numpy(), interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(titles[c], fontsize=9)
        axes[r][0].set_ylabel(label, fontsize=9)
    fig.subplots_adjust(left=0.03, right=0.99, bottom=0.01, wspace=0.04, hspace=0.04,
                        top=1 - TITLE_INCHES / (n_rows * PANEL_INCHES + TITLE_INCHES))
    path.parent.mkdir(parents=True, exist_ok=True)
    # JPEG (quality 92) is a quarter of the PNG's size on these noisy shapes backgrounds: the form to commit
    jpeg = path.suffix.lower() in (".jpg", ".jpeg")
    fig.savefig(path, **({"pil_kwargs": {"quality": 92}} if jpeg else {}))
    plt.close(fig)
    return path


def compare(run_dirs: list[Path], image_ids: list[int], score_thresh: float, out: Path) -> Path:
    loaded = [load_run(run_dir) for run_dir in run_dirs]
    samples, class_names = val_images([(d, cfg) for d, (_, cfg) in zip(run_dirs, loaded, strict=True)], image_ids)
    rows = panels([model for model, _ in loaded], samples, class_names, score_thresh)
    titles = ["ground truth"] + [
        f"{cfg.roi.name}: {d.name} (score ≥ {score_thresh:g})"
        for d, (_, cfg) in zip(run_dirs, loaded, strict=True)
    ]
    return save_figure(rows, titles, [f"image {i}" for i in image_ids], out)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("runs", type=Path, nargs="+", metavar="run",
                        help="two or more run directories of the same val data, e.g. RoIPool's, RoIAlign's, ...")
    parser.add_argument("--image-ids", type=int, nargs="+", default=list(DEFAULT_IMAGE_IDS),
                        help=f"val image ids, one row each (default {' '.join(map(str, DEFAULT_IMAGE_IDS))})")
    parser.add_argument("--score-thresh", type=float, default=0.5, help="draw detections scoring at least this")
    parser.add_argument("--out", type=Path,
                        help="PNG or JPEG path (default results/figures/<A>_vs_<B>[_vs_...].png)")  # fmt: skip
    args = parser.parse_args(argv)
    if len(args.runs) < 2:
        parser.error("give at least two run directories to compare")
    out = args.out or Path("results/figures") / ("_vs_".join(run.name for run in args.runs) + ".png")
    try:
        path = compare(args.runs, args.image_ids, args.score_thresh, out)
    except (ComparisonError, CheckpointError, FileNotFoundError) as e:
        parser.exit(2, f"compare_predictions: error: {e}\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
