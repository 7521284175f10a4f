"""metrics.json: what a run (train.py) or an evaluation (evaluate.py) scored, and of what."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from maskrcnn.resolvers import roi_id


def run_metrics(run_config: Any, coco_metrics: dict[str, float]) -> dict[str, Any]:
    """The COCO metrics (flat bbox/AP ... segm/APl keys) and which run they belong to: roi, model, data, seed."""
    return {
        **coco_metrics,
        "roi": roi_id(run_config["roi"]["name"], run_config["roi"].get("impl", "ours")),
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
