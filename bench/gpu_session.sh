#!/usr/bin/env bash
# One GPU session that fits the time a GPU is lent (15 minutes of device time, the machine's start included):
# at most BUDGET_S (480) seconds on one H100/H200, steps in priority order
#   env, wheels, build, CUDA tests (ops, mask pasting), the user's main job (train.py experiment=demo in
#   bf16-mixed, then evaluate.py and predict on its checkpoint), compute-sanitizer memcheck, op benchmark fp32 /
#   bf16, training-step benchmark against torchvision, deterministic GPU training (a straight run, and a run
#   killed with SIGKILL and resumed, bitwise the same), then extras
#   (fused-vs-grouped extractor benchmark, the cost of -fmad=false).
# Before each step the script checks its own budget: a step whose estimate no longer fits is skipped, and the
# summary says so; a step that runs is cut off (timeout) at 3x its estimate or at the end of the budget.
# Results: at most 6 files in $OUT, written even when a step fails or is cut off:
#   summary.txt     one page: machine, every step's status and seconds, the test, sanitizer and benchmark lines
#   results.tar.gz  every step's log and the benchmark JSONs this run wrote (bench/results/*.json)
#   junit.xml       the CUDA op tests
#   demo.json       the demo run's metrics, step times and validations, evaluate.py's and predict's results
#
#   bash bench/gpu_session.sh              # on the GPU machine, in the repo root, with .whl/ carried along
#   bash bench/gpu_session.sh --dry-run    # anywhere: the plan with estimates, and every step that needs no GPU
# Environment: OUT (default /tmp/gpu_session_out), BUDGET_S (480), PYTHON (python3), WHEELS (.whl), SITE
# (/tmp/site, where the wheels go), MAX_JOBS (16).
set -u
cd "$(dirname "$0")/.."

DRY=0
[ "${1:-}" = "--dry-run" ] && DRY=1
OUT="${OUT:-/tmp/gpu_session_out}"
BUDGET_S="${BUDGET_S:-480}"
PY="${PYTHON:-python3}"
WHEELS="${WHEELS:-.whl}"
SITE="${SITE:-/tmp/site}"
RESERVE_S=15  # kept back for writing the summary and the tar
export MAX_JOBS="${MAX_JOBS:-16}" TORCH_CUDA_ARCH_LIST=9.0 PYTHONUNBUFFERED=1 PY
export PYTHONPATH="$PWD:$SITE${PYTHONPATH:+:$PYTHONPATH}"

mkdir -p "$OUT"
WORK="$(mktemp -d)"
export WORK
mkdir -p "$WORK/logs" "$WORK/json"
touch "$WORK/start"
T0=$SECONDS
STATUS="$WORK/status.txt"
: > "$STATUS"

# name | estimated seconds on an H200 | gpu (needs CUDA) or cpu (also runs in a dry run, in its CPU form)
PLAN="env 5 cpu
wheels 10 cpu
build 60 cpu
tests 90 cpu
demo 240 gpu
sanitizer 120 gpu
bench_fp32 45 gpu
bench_bf16 45 gpu
train_step 100 gpu
deterministic 120 gpu
multilevel 30 gpu
fmad_cost 60 gpu"

estimate() { echo "$PLAN" | awk -v n="$1" '$1 == n { print $2 }'; }

# step NAME CMD...: run CMD within the budget, log to $WORK/logs/NAME.log, record "NAME STATUS SECONDS NOTE".
step() {
    local name="$1"; shift
    local est left cap t rc
    est="$(estimate "$name")"
    left=$((BUDGET_S - RESERVE_S - (SECONDS - T0)))
    if [ "$est" -gt "$left" ]; then
        echo "$name skipped 0 needs ~${est} s, ${left} s of the budget left" | tee -a "$STATUS"
        return 0
    fi
    # On the GPU a step may take 3x its estimate; a dry run's CPU steps have no H200 estimate to hold to.
    cap=$((3 * est < left && DRY == 0 ? 3 * est : left))
    echo "== $name (estimate ${est} s, cut off after ${cap} s)"
    t=$SECONDS
    timeout --kill-after=10 "$cap" "$@" > "$WORK/logs/$name.log" 2>&1
    rc=$?
    tail -n 5 "$WORK/logs/$name.log"
    if [ "$rc" -eq 0 ]; then
        echo "$name ok $((SECONDS - t))" | tee -a "$STATUS"
    elif [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then
        echo "$name cut-off $((SECONDS - t)) ran past ${cap} s" | tee -a "$STATUS"
    else
        echo "$name FAILED $((SECONDS - t)) exit code $rc" | tee -a "$STATUS"
    fi
}

# gpu_step NAME CMD...: a step that needs the GPU; a dry run only lists it.
gpu_step() {
    if [ "$DRY" -eq 1 ]; then
        echo "$1 dry-run 0 needs a GPU" | tee -a "$STATUS"
        return 0
    fi
    step "$@"
}

# The last lines of a log that say what happened, for the summary.
summary_lines() {  # NAME PATTERN COUNT
    [ -f "$WORK/logs/$1.log" ] && grep -E "$2" "$WORK/logs/$1.log" | tail -n "$3"
}

package() {
    local summary="$OUT/summary.txt"
    find bench/results -name '*.json' -newer "$WORK/start" -exec cp {} "$WORK/json/" \; 2>/dev/null
    {
        echo "GPU session $(date -u +%Y-%m-%dT%H:%M:%SZ)$([ "$DRY" -eq 1 ] && echo ' (DRY RUN: no GPU step ran)')"
        summary_lines env '^(GPU|torch)' 2
        echo "budget ${BUDGET_S} s, used $((SECONDS - T0)) s"
        echo
        printf '%-14s %-9s %7s  %s\n' step status seconds note
        while read -r name status secs note; do
            printf '%-14s %-9s %7s  %s\n' "$name" "$status" "$secs" "$note"
        done < "$STATUS"
        echo
        echo "--- tests";           summary_lines tests '(passed|failed|error|collected|no tests)' 1
        echo "--- demo (train bf16-mixed, evaluate, predict)"; summary_lines demo '^(demo|metrics:)' 6
        echo "--- sanitizer";       summary_lines sanitizer '(ERROR SUMMARY|passed|failed)' 2
        echo "--- op benchmark fp32 (ms; x = torchvision / ours; bw = fused fwd+bwd bandwidth fraction)"
        summary_lines bench_fp32 '^(case|roi_|measured)' 8
        echo "--- op benchmark bf16";  summary_lines bench_bf16 '^(case|roi_|measured)' 8
        echo "--- training step";   summary_lines train_step '(images_per_second|ours / torchvision)' 3 | cut -c1-300
        echo "--- deterministic: straight vs killed + resumed"; summary_lines deterministic '(passed|failed|error)' 1
        echo "--- fused vs grouped extractor"; summary_lines multilevel 'grouped / fused' 2
        echo "--- -fmad=true (FMA contraction) instead of -fmad=false"; summary_lines fmad_cost '^(case|roi_|exact)' 9
    } > "$summary"
    tar -czf "$OUT/results.tar.gz" -C "$WORK" logs json status.txt
    echo "== results in $OUT:"; ls -l "$OUT"
    cat "$summary"
}
trap package EXIT
trap 'exit 143' TERM INT  # so that a kill still leaves the summary and the tar

echo "plan (budget ${BUDGET_S} s$([ "$DRY" -eq 1 ] && echo ', dry run: GPU steps are listed, not run')):"
echo "$PLAN" | awk -v b=$((BUDGET_S - RESERVE_S)) '{ s += $2; printf "  %-14s ~%4d s, done by ~%4d s  %-3s %s\n",
    $1, $2, s, ($3 == "gpu" ? "GPU" : ""), (s > b ? "past the budget if the estimates hold" : "") }'

step env bash -c 'nvidia-smi; "$PY" -c "$1"; nvcc --version | tail -n 2; compute-sanitizer --version | head -n 2; nproc' _ \
    'import sys, torch, torchvision
print("torch", torch.__version__, "torchvision", torchvision.__version__, "CUDA", torch.version.cuda,
      "python", sys.version.split()[0])
print("GPU", torch.cuda.get_device_name(0) if torch.cuda.is_available() else None)'

# hydra-core, omegaconf, antlr4, pycocotools, faster-coco-eval: missing on the GPU image, carried as cp312 wheels.
# A dry run checks that pip would install them for the GPU machine's Python 3.12, without installing.
if ! ls "$WHEELS"/*.whl > /dev/null 2>&1; then
    echo "wheels $([ "$DRY" -eq 1 ] && echo skipped || echo FAILED) 0 no wheels in $WHEELS/" | tee -a "$STATUS"
elif [ "$DRY" -eq 1 ]; then
    step wheels "$PY" -m pip install --dry-run --no-index --no-deps --only-binary=:all: --target "$WORK/site" \
        --python-version 3.12 --implementation cp --platform manylinux_2_28_x86_64 "$WHEELS"/*.whl
else
    step wheels "$PY" -m pip install --quiet --no-index --no-deps --no-compile --upgrade --target "$SITE" "$WHEELS"/*.whl
fi

# With a GPU this builds CPU + CUDA (sm_90 only: TORCH_CUDA_ARCH_LIST above); a dry run builds the CPU library.
step build "$PY" -m ops.build
if [ "$DRY" -eq 0 ]; then  # the FMA variant for fmad_cost, built on the idle cores while the tests run
    (ROI_OPS_FMAD=1 timeout "$BUDGET_S" "$PY" -c 'import ops' > "$WORK/logs/build_fmad.log" 2>&1;
     echo "build finished, exit code $?" >> "$WORK/logs/build_fmad.log") &
fi

OP_TESTS="tests/test_ops_cuda.py tests/test_multilevel.py tests/test_paste.py"
if [ "$DRY" -eq 1 ]; then  # collecting them proves the GPU run will find them (no hydra needed)
    step tests "$PY" -m pytest -q -p no:cacheprovider --collect-only $OP_TESTS --junitxml="$OUT/junit.xml"
else
    step tests "$PY" -m pytest -q -rs -p no:cacheprovider $OP_TESTS --junitxml="$OUT/junit.xml"
fi

# The user's main job on the GPU: the Quick-start demo in bf16-mixed (the shapes data is generated first, in the
# step), then evaluate.py and predict on its last checkpoint; bench/demo_summary.py gathers it into demo.json.
gpu_step demo bash -c '
    set -e
    "$PY" train.py experiment=demo trainer.precision=bf16-mixed data.module.num_workers=4         hydra.run.dir="$WORK/demo/train"
    "$PY" evaluate.py ckpt_path="$WORK/demo/train/checkpoints/last.ckpt" hydra.run.dir="$WORK/demo/evaluate"
    "$PY" -m maskrcnn.predict ckpt_path="$WORK/demo/train/checkpoints/last.ckpt" output="$WORK/demo/predict"         "input="data/shapes-256px-2000+200-seed0/val/00000[0-3].png"" score_thresh=0.3
    "$PY" -m bench.demo_summary "$WORK/demo" --out "$OUT/demo.json"'

# Every tensor its own cudaMalloc, so that memcheck sees an access past a tensor's end.
gpu_step sanitizer env PYTORCH_NO_CUDA_MEMORY_CACHING=1 compute-sanitizer --tool memcheck --error-exitcode 99 \
    --print-limit 20 "$PY" -m pytest -q -p no:cacheprovider tests/test_ops_cuda.py -k sanitizer_smoke
gpu_step bench_fp32 "$PY" -m bench.roi_ops --device cuda --dtype float32 --repeat 20
gpu_step bench_bf16 "$PY" -m bench.roi_ops --device cuda --dtype bfloat16 --repeat 20
gpu_step train_step "$PY" -m bench.train_step --device cuda --out bench/results/train_step_cuda.json
# The kill + resume test in the default layout: its straight run and its killed + resumed runs must agree bitwise.
gpu_step deterministic "$PY" -m pytest -q -p no:cacheprovider tests/test_resume.py -k channels_last \
    --junitxml="$WORK/logs/deterministic.xml"
gpu_step multilevel "$PY" -m bench.multilevel --device cuda --repeat 20
# The cost of -fmad=false: the fp32 op benchmark again with FMA contraction, and whether the max modes then still
# equal the CPU bitwise (they are expected not to: that is what -fmad=false buys).
gpu_step fmad_cost bash -c '
    until grep -q "build finished" "$WORK/logs/build_fmad.log"; do sleep 2; done
    export ROI_OPS_FMAD=1
    "$PY" -m bench.roi_ops --device cuda --dtype float32 --repeat 20 --out bench/results/roi_ops_cuda_fmad.json
    "$PY" -m pytest -q -p no:cacheprovider tests/test_ops_cuda.py -k argmax_matches_cpu | tail -n 1 |
        sed "s/^/exact argmax and max outputs with FMA: /"'

! grep -Eq ' (FAILED|cut-off) ' "$STATUS"
