#!/usr/bin/env bash
# One-shot GPU session: install carried wheels, build the ops with CUDA, run the op tests
# and the RoI op benchmarks, the training-step benchmark and the GPU determinism check. Every step runs even when an earlier one fails; logs go to $OUT.
#   usage (repo root, on the GPU machine):  bash bench/gpu_session.sh
set -x
cd "$(dirname "$0")/.."
OUT="${OUT:-/tmp/gpu_session_out}"
mkdir -p "$OUT" bench/results
STATUS="$OUT/status.txt"
: > "$STATUS"

step() {  # step NAME CMD... : run, tee its log into $OUT, record the exit code, never abort
    local name="$1"; shift
    "$@" 2>&1 | tee "$OUT/$name.log"
    local rc=${PIPESTATUS[0]}
    echo "$name rc=$rc" | tee -a "$STATUS"
}

# Machine description, for the benchmark records.
step env bash -c 'nvidia-smi; python3 -V; python3 -c "import torch, torchvision; print(torch.__version__, torchvision.__version__, torch.version.cuda, torch.cuda.get_device_name(0))"; nvcc --version'

# hydra/omegaconf/pycocotools (and ninja, if the machine lacks it) travel as wheels in .whl/.
if ls .whl/*.whl >/dev/null 2>&1; then
    step wheels python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl
    export PYTHONPATH="/tmp/site:${PYTHONPATH:-}"
    export PATH="/tmp/site/bin:$PATH"  # the ninja wheel's launcher (torch's JIT build needs `ninja`)
fi
command -v ninja || echo "WARNING: no ninja on PATH; carry ninja-*.whl in .whl/" | tee -a "$STATUS"
export PYTHONPATH="$PWD:${PYTHONPATH:-}"
if [ -z "${CUDA_HOME:-}" ] && command -v nvcc >/dev/null; then
    export CUDA_HOME="$(dirname "$(dirname "$(readlink -f "$(command -v nvcc)")")")"
fi
export MAX_JOBS="${MAX_JOBS:-16}"

step build python3 -m ops.build
# `import ops` JIT-builds CPU+CUDA when a GPU is present; do it here so a compile error has its own log.
step build_cuda python3 -c "from ops import build; build.load(verbose=True); import torch; print(torch.ops.roi_ops.roi_align_forward)"
step tests python3 -m pytest -q -rs tests/test_ops.py tests/test_ops_cuda.py tests/test_multilevel.py --junitxml="$OUT/tests.xml"
for dt in float32 bfloat16; do
    step "bench_$dt" python3 bench/roi_ops.py --device cuda --dtype "$dt"
done
# Issue 6: the training step side by side (8 x 800x1333, bf16), and two deterministic GPU runs (issue 5).
step train_step python3 -m bench.train_step --device cuda
step train_step_cl python3 -m bench.train_step --device cuda --channels-last --out bench/results/train_step_cuda_channels_last.json
step deterministic_gpu python3 -m pytest -q tests/test_resume.py -k two_deterministic

# Bring back whatever the benchmarks wrote.
cp -v bench/results/*.json "$OUT/" 2>/dev/null
cat "$STATUS"
! grep -qv ' rc=0$' "$STATUS"
