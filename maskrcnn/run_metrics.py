"""metrics.json: what a run (train.py) or an evaluation (evaluate.py) scored, and of what."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def run_metrics(run_config: Any, coco_metrics: dict[str, float]) -> dict[str, Any]:
    """The COCO metrics (flat bbox/AP ... segm/APl keys) and which run they belong to: roi, model, data, seed."""
    return {
        **coco_metrics,
        "roi": run_config["roi"]["name"],
        "model": run_config["model"]["name"],
        "data": run_config["data"]["name"],
        "seed": int(run_config["seed"]),
    }


def write_metrics(output_dir: str | Path, metrics: dict[str, Any]) -> Path:
    """Writes <output_dir>/metrics.json and prints where it is, with the mask AP."""
    path = Path(output_dir) / "metrics.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(metrics, indent=2) + "\n")
    print(f"metrics: {path}  segm/AP={metrics.get('segm/AP', float('nan')):.4f}")
    return path


def write_per_class(output_dir: str | Path, per_class: dict[str, list[dict[str, Any]]]) -> Path:
    """Writes <output_dir>/per_class.json (by "bbox" / "segm": id, name, AP, AP50, AP75 per class with ground
    truth) and prints the classes as a table, worst mask AP first."""
    path = Path(output_dir) / "per_class.json"
    path.write_text(json.dumps(per_class, indent=2) + "\n")
    print(per_class_table(per_class))
    return path


def per_class_table(per_class: dict[str, list[dict[str, Any]]]) -> str:
    """Markdown table in AP points, sorted by mask AP (box AP where there are no masks), lowest first."""
    boxes = {row["id"]: row for row in per_class.get("bbox", [])}
    masks = {row["id"]: row for row in per_class.get("segm", [])}
    rows = sorted(masks.values() or boxes.values(), key=lambda row: row["AP"])
    lines = ["| class | id | mask AP | mask AP50 | mask AP75 | box AP |", "|---|---|---|---|---|---|"]
    for row in rows:
        mask, box = masks.get(row["id"], {}), boxes.get(row["id"], {})
        cells = [_points(mask.get(key)) for key in ("AP", "AP50", "AP75")] + [_points(box.get("AP"))]
        lines.append(f"| {row['name']} | {row['id']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _points(value: float | None) -> str:
    return "—" if value is None else f"{100 * value:.1f}"
