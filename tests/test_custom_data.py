"""Your own COCO-format data through the CLI: data=coco_custom, classes from the JSON, errors that say what is wrong."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from maskrcnn.data.shapes import ensure_shapes_dataset

REPO = Path(__file__).resolve().parents[1]
# The shapes classes under odd, non-contiguous ids and other names, as an export from a labelling tool has them.
RENAMED = {1: (7, "kettle"), 2: (31, "mug"), 3: (32, "spoon"), 4: (90, "plate"), 5: (212, "fork"), 6: (3, "bowl")}
SMALL = [
    "trainer.max_steps=3",
    "trainer.val_check_interval=3",
    "optim.base_batch_size=2",
    "optim.warmup_iters=1",
    "data.image_min_size=128",
    "data.image_max_size=128",
    "data.module.batch_size=2",
    "data.module.num_workers=0",
    "train.vis_images=1",
    "model.roi_heads.detections_per_img=10",
]


def _export(root: Path, source: Path) -> None:
    """The shapes data as a user's export: <root>/train, <root>/annotations/{train,val}.json (no val folder yet)."""
    (root / "annotations").mkdir(parents=True)
    shutil.copytree(source / "train", root / "train")
    for split in ("train", "val"):
        data = json.loads((source / "annotations" / f"instances_{split}.json").read_text())
        data["categories"] = [{"id": RENAMED[c["id"]][0], "name": RENAMED[c["id"]][1]} for c in data["categories"]]
        for ann in data["annotations"]:
            ann["category_id"] = RENAMED[ann["category_id"]][0]
        (root / "annotations" / f"{split}.json").write_text(json.dumps(data))


def _cli(script: str, *overrides: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(REPO / script), *overrides], cwd=cwd, capture_output=True, text=True, timeout=600
    )


@pytest.mark.slow
def test_a_custom_export_trains_with_its_own_ids_and_names(tmp_path):
    source = ensure_shapes_dataset(
        tmp_path / "shapes", num_train=8, num_val=4, image_size=128, max_size=64, workers=1
    )
    export = tmp_path / "export"
    _export(export, source)
    run = tmp_path / "run"
    args = ["data=coco_custom", f"data.root={export}", *SMALL, f"hydra.run.dir={run}"]

    missing = _cli("train.py", *args, cwd=tmp_path)
    assert missing.returncode != 0
    assert f"Could not find the val images at '{export / 'val'}'" in missing.stderr
    assert "Traceback" not in missing.stderr.split("Error")[0], "a clear message, not an internal traceback first"

    shutil.copytree(source / "val", export / "val")
    proc = _cli("train.py", *args, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads((run / "metrics.json").read_text())["data"] == "custom"
    per_class = json.loads((run / "per_class.json").read_text())
    names = {cid: name for cid, name in RENAMED.values()}
    assert per_class["segm"] and all(names[row["id"]] == row["name"] for row in per_class["segm"])

    evaluation = tmp_path / "eval"
    ckpt = run / "checkpoints" / "last.ckpt"
    proc = _cli("evaluate.py", f"ckpt_path={ckpt}", f"hydra.run.dir={evaluation}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    predicted = {r["category_id"] for r in json.loads((evaluation / "segm_results.json").read_text())}
    assert predicted and predicted <= set(names), "predictions carry the export's own category ids"
