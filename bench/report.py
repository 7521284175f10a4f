"""Writing a benchmark's JSON record: the one output format every `python -m bench.<name>` script shares."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def write_json(path: Path, record: dict[str, Any]) -> None:
    """Writes `record` as indented JSON to `path` (creating its directory) and says where."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {path}")
