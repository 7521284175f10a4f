"""A one-line description of the machine a run used, for metrics.json and benchmark records."""

from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path
from typing import Any

import torch


def device_description() -> str:
    if torch.cuda.is_available():
        return f"{torch.cuda.device_count()}x {torch.cuda.get_device_name(0)}"
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"CPU {cpu} ({os.cpu_count()} cores, {torch.get_num_threads()} threads)"


def code_version(source: Path = Path(__file__)) -> dict[str, Any]:
    """The checkout the code runs from: {"git_commit": sha, "git_dirty": bool, "git_note": None}, with
    git_dirty true when a tracked file differs from that commit. Outside a git checkout (an installed copy, no
    git) both are None and git_note says why."""
    source = Path(source).resolve()
    root = source.parents[1]

    def git(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, timeout=30)

    try:
        # The file must be tracked by that repository: an installed copy inside some other checkout is not it.
        tracked = git("ls-files", "--error-unmatch", str(source.relative_to(root)))
        if tracked.returncode != 0:
            return {"git_commit": None, "git_dirty": None, "git_note": f"{root} is not a git checkout of this code"}
        commit = git("rev-parse", "--verify", "HEAD").stdout.strip()
        status = git("status", "--porcelain", "--untracked-files=no").stdout
    except (OSError, subprocess.SubprocessError) as e:
        return {"git_commit": None, "git_dirty": None, "git_note": f"git could not be run: {e}"}
    return {"git_commit": commit, "git_dirty": bool(status.strip()), "git_note": None}
