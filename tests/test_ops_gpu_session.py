"""``bash bench/gpu_session.sh --dry-run`` on the CPU: it prints the plan, runs every step that needs no GPU,
budgets itself, and leaves at most 6 files in $OUT (bug 4: the script wrote about 20 files into $OUT, while at most
8 come back from a device run, and its final copy never ran when it passed the command's time limit)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tarfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
STEPS = ["env", "wheels", "build", "tests", "demo", "sanitizer", "bench_fp32", "bench_bf16", "train_step",
         "deterministic", "multilevel", "fmad_cost"]


def dry_run(tmp_path: Path, **env: str) -> tuple[subprocess.CompletedProcess, Path, str]:
    out = tmp_path / "out"
    wheels = tmp_path / "wheels"
    wheels.mkdir(exist_ok=True)
    full_env = {**os.environ, "OUT": str(out), "PYTHON": sys.executable, "WHEELS": str(wheels), **env}
    proc = subprocess.run(["bash", "bench/gpu_session.sh", "--dry-run"], cwd=REPO, env=full_env, capture_output=True,
                          text=True, timeout=300)
    return proc, out, (out / "summary.txt").read_text()


def step_status(summary: str, step: str) -> str:
    match = re.search(rf"^{step}\s+(\S+)", summary, re.MULTILINE)
    assert match, f"{step} missing from the summary:\n{summary}"
    return match.group(1)


def test_dry_run_runs_the_cpu_steps_and_leaves_at_most_six_files(tmp_path):
    proc, out, summary = dry_run(tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    files = sorted(p.name for p in out.iterdir())
    assert len(files) <= 6 and all((out / f).is_file() for f in files), files
    assert {"summary.txt", "results.tar.gz", "junit.xml"} <= set(files)
    for step in STEPS:  # the plan with estimates, then each step's outcome
        assert re.search(rf"^  {step} +~ *\d+ s, done by ~ *\d+ s", proc.stdout, re.MULTILINE), step
    assert [step_status(summary, s) for s in ("env", "build", "tests")] == ["ok"] * 3
    assert step_status(summary, "wheels") == "skipped"  # none carried here
    assert {step_status(summary, s) for s in STEPS[4:]} == {"dry-run"}
    assert re.search(r"^\d+ tests collected", summary, re.MULTILINE)  # the GPU test files collect
    with tarfile.open(out / "results.tar.gz") as tar:
        names = set(tar.getnames())
    assert {"status.txt", "logs/env.log", "logs/build.log", "logs/tests.log"} <= names


def test_steps_past_the_budget_are_skipped_and_failures_reported(tmp_path):
    (tmp_path / "wheels").mkdir()
    (tmp_path / "wheels" / "broken-1.0-py3-none-any.whl").write_text("not a wheel")
    proc, out, summary = dry_run(tmp_path, BUDGET_S="45")
    assert proc.returncode != 0  # the failed step
    assert step_status(summary, "wheels") == "FAILED"
    assert re.search(r"^build\s+skipped\s+0\s+needs ~\d+ s, -?\d+ s of the budget left", summary, re.MULTILINE)
    assert step_status(summary, "tests") == "skipped"
    assert len(list(out.iterdir())) <= 6


def test_every_test_selection_in_the_script_names_tests_that_exist():
    """Each ``pytest tests/FILE.py -k WORD`` the GPU steps run selects a test of that file: a selection that names
    a test since merged away (as the deterministic step's did) would only show on a GPU, as a step run for nothing."""
    script = (REPO / "bench" / "gpu_session.sh").read_text()
    selections = re.findall(r"-m pytest -q -p no:cacheprovider (tests/\S+\.py) -k (\w+)", script)
    assert len(selections) == 3, selections  # the sanitizer, deterministic and fmad_cost steps
    files = sorted({file for file, _ in selections})
    proc = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider", *files],
                          cwd=REPO, capture_output=True, text=True, timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    collected = [line for line in proc.stdout.splitlines() if "::" in line]
    for file, word in selections:  # a plain word: pytest's -k matches it within a test's name and ids
        assert any(t.startswith(f"{file}::") and word.lower() in t.lower() for t in collected), (file, word)
