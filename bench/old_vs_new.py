"""Running a benchmark's child in an older checkout and in this one, interleaved (bench.validation, bench.short_run).

The old side is a checkout of the commit to compare with (e.g. `git worktree add /tmp/old 3f51a29`, with its own
`python -m ops.build`). Each run is a fresh process of the benchmark module's file with `--child ...`, its cwd
and PYTHONPATH the checkout, so it imports that checkout's packages; it prints one `RESULT {json}` line.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path


def run_child(script: str, checkout: Path, child_args: list[str]) -> dict:
    """The RESULT of `python script --child ...child_args` run in `checkout`, plus the load average before it."""
    env = {**os.environ, "PYTHONPATH": str(checkout), "PYTHONWARNINGS": "ignore"}
    command = [sys.executable, str(Path(script).resolve()), "--child", *child_args]
    load = os.getloadavg()[0]
    proc = subprocess.run(command, cwd=checkout, env=env, capture_output=True, text=True, check=False)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"{Path(script).name} in {checkout} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return {**json.loads(lines[-1][len("RESULT ") :]), "load_before": load}


def commit_of(checkout: Path) -> str:
    """Short commit of a checkout, with '+uncommitted' when its tracked files differ from it."""
    proc = subprocess.run(["git", "-C", str(checkout), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    dirty = subprocess.run(["git", "-C", str(checkout), "status", "--porcelain", "--untracked-files=no"],
                           capture_output=True, text=True).stdout.strip()  # fmt: skip
    return proc.stdout.strip() + ("+uncommitted" if dirty else "")
