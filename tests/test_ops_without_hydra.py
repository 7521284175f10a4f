"""The op tests need neither hydra nor the detector package: they collect and run in a process where ``import
hydra`` fails, as on the GPU machine's image before its wheels are installed (bug 3: conftest.py imported hydra
and maskrcnn at module level, so pytest stopped at conftest and no CUDA test ran)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
OP_TESTS = ["tests/test_ops.py", "tests/test_ops_cuda.py", "tests/test_multilevel.py", "tests/test_ops_emulation.py"]
BLOCKED = ("hydra", "omegaconf", "pycocotools")
# A meta-path finder first in line makes `import hydra` (and its submodules) raise ImportError. hydra-core also
# registers a pytest plugin that a machine without hydra does not have: plugin autoloading is switched off (else
# pytest marks the plugin's package for assertion rewriting, and its import hook, ahead of ours, imports hydra).
BLOCK = (
    "import sys\n"
    "class Blocked:\n"
    "    def find_spec(self, name, path=None, target=None):\n"
    f"        if name.partition('.')[0] in {BLOCKED!r}:\n"
    "            raise ImportError(name + ' is blocked by the test')\n"
    "sys.meta_path.insert(0, Blocked())\n"
)
RUN_PYTEST = "import pytest; sys.exit(pytest.main(['-p', 'no:cacheprovider'] + sys.argv[1:]))"


def run_blocked(*pytest_args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1"}
    return subprocess.run([sys.executable, "-c", BLOCK + RUN_PYTEST, *pytest_args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=600)


def test_hydra_is_blocked_in_the_subprocess():
    proc = subprocess.run([sys.executable, "-c", BLOCK + "import hydra"], capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0 and "hydra is blocked by the test" in proc.stderr


def test_op_tests_collect_and_run_without_hydra():
    collected = run_blocked("-q", "--collect-only", *OP_TESTS)
    assert collected.returncode == 0, collected.stdout[-3000:] + collected.stderr[-3000:]
    assert "error" not in collected.stdout.splitlines()[-1]
    assert "test_ops_cuda.py::test_cuda_matches_cpu" in collected.stdout
    # a quick slice of them runs too (the whole files run in the main suite)
    ran = run_blocked("-q", *OP_TESTS, "-k", "literal or one_level or empty_rois_and_channels")
    assert ran.returncode == 0, ran.stdout[-3000:] + ran.stderr[-3000:]
    assert " passed" in ran.stdout.splitlines()[-1]
