#!/usr/bin/env bash
# GPU check of sertrain's training fast path (README, "Training speed"). One run, about 8 minutes
# on an H200; nothing here was measured on a GPU by the session that wrote it.
#
#   1. Here, with network access (once): serprep's audio packages the device image lacks, as
#      Python 3.12 wheels, into .whl/ (ignored by git through .git/info/exclude):
#          bash benchmarks/gpu_check.sh --fetch-wheels
#   2. On the GPU machine (the device tool: run with carry [".whl"] and timeout_s 600):
#          bash benchmarks/gpu_check.sh
#
# What it writes to $OUT (./gpu_check_out without the device tool):
#   env.txt             GPU, driver, torch, Python
#   bench.txt/.json     benchmarks/bench_train.py --device cuda: the paper model's training step
#                       (batch 32, 64) on the old loop (legacy) and the new one (fast, fast+compile),
#                       segments/s, FLOPs per segment, TFLOP/s and the fraction of the peak
#                       (989 TFLOP/s bf16 dense, H100/H200 SXM); whole epochs from the store with
#                       --cache none (DataLoader, 2 workers) against --cache device; synchronising
#                       CUDA calls per step of each loop
#   fold.txt/.json      benchmarks/time_fold.py: fold 1 of a 12-hour (IEMOCAP-sized) demo store, the
#                       paper model (batch 60, as configured), --cache device, --compile chosen from
#                       bench.json; 50 epochs, or as many as FOLD_BUDGET_S allows and the rest
#                       extrapolated (the table says which)
#   log.txt             everything printed
#
# Knobs (environment): STEPS (timed steps per training row, 20), EPOCH_STEPS (steps per epoch row,
# 40), PATHS (legacy,fast,fast+compile), FOLD_HOURS (12), FOLD_EPOCHS (50), FOLD_BUDGET_S (150),
# FOLD_COMPILE (auto: default if fast+compile beat fast at batch 64 by 5 %, else off), JOBS (12),
# DEADLINE_S (570: the fold's budget shrinks so that the whole script ends by then; the device
# tool stops a command at 600 s), PHASE (all | bench | fold: the two halves as separate runs on
# the same warm machine, if one run does not fit; fold then reads bench.json from WORK);
# DEVICE (cuda) and MODEL (paper) only to try the script's plumbing elsewhere, e.g.
#   DEVICE=cpu MODEL=cpu-small STEPS=2 EPOCH_STEPS=2 PATHS=legacy,fast FOLD_HOURS=0.3 FOLD_EPOCHS=2 \
#       bash benchmarks/gpu_check.sh
set -uo pipefail

WHEELS=(soundfile==0.14.0 cffi==2.1.1 pycparser==3.12 ducc0==0.42.0 soxr==0.5.0.post1)

if [[ "${1:-}" == "--fetch-wheels" ]]; then
    cd "$(dirname "$0")/.." || exit 1
    dest="${WHEEL_DIR:-.whl}"
    python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
        --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d "$dest" "${WHEELS[@]}" || exit 1
    if [[ "$dest" == ".whl" && -d .git ]]; then
        mkdir -p .git/info && touch .git/info/exclude
        grep -qx '/.whl/' .git/info/exclude || echo '/.whl/' >> .git/info/exclude
    fi
    ls -l "$dest"
    exit 0
fi

cd "$(dirname "$0")/.." || exit 1
OUT="${OUT:-$PWD/gpu_check_out}"
mkdir -p "$OUT"
exec > >(tee -a "$OUT/log.txt") 2>&1
export PYTHONUNBUFFERED=1
PY="${PYTHON:-python3}"
STEPS="${STEPS:-20}"
EPOCH_STEPS="${EPOCH_STEPS:-40}"
PATHS="${PATHS:-legacy,fast,fast+compile}"
FOLD_HOURS="${FOLD_HOURS:-12}"
FOLD_EPOCHS="${FOLD_EPOCHS:-50}"
FOLD_BUDGET_S="${FOLD_BUDGET_S:-150}"
FOLD_COMPILE="${FOLD_COMPILE:-auto}"
JOBS="${JOBS:-12}"
DEADLINE_S="${DEADLINE_S:-570}"
PHASE="${PHASE:-all}"
DEVICE="${DEVICE:-cuda}"
MODEL="${MODEL:-paper}"
if [[ "$MODEL" == "paper" ]]; then MODEL_STEPS=(--small-steps 0 --paper-steps "$STEPS"); else MODEL_STEPS=(--small-steps "$STEPS" --paper-steps 0); fi
WORK="${WORK:-/tmp/sertrain_gpu}"
mkdir -p "$WORK"
T0=$SECONDS
stamp() { echo "== [$((SECONDS - T0)) s] $*"; }

if compgen -G ".whl/*.whl" > /dev/null; then
    stamp "installing carried wheels"
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        || { echo "wheel install failed"; exit 1; }
    export PYTHONPATH="/tmp/site:$PWD${PYTHONPATH:+:$PYTHONPATH}"
else
    export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
fi

stamp "environment"
{
    nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv 2>&1
    "$PY" - <<'EOF'
import platform, torch
print("python", platform.python_version(), "torch", torch.__version__, "cuda", torch.version.cuda,
      "cudnn", torch.backends.cudnn.version())
print("device", torch.cuda.get_device_name(0) if torch.cuda.is_available() else "NO CUDA DEVICE")
import ducc0, soundfile, h5py, serprep.features, sertrain.train  # noqa: F401  (the build and training import)
print("imports ok")
EOF
} 2>&1 | tee "$OUT/env.txt"
grep -q "imports ok" "$OUT/env.txt" || { echo "environment incomplete: see env.txt (fetch the wheels first?)"; exit 1; }
if [[ "$DEVICE" == cuda* ]] && grep -q "NO CUDA DEVICE" "$OUT/env.txt"; then echo "no CUDA device"; exit 1; fi

# The IEMOCAP-sized corpus is generated on one core while the GPU benchmarks run.
stamp "generating the ${FOLD_HOURS} h demo corpus in the background"
CORPUS="$WORK/fold_${FOLD_HOURS}h/IEMOCAP_full_release"
DONE="$WORK/corpus_${FOLD_HOURS}h.done"
if [[ -f "$DONE" ]]; then
    CORPUS_PID=""
else
    ( "$PY" -m serprep.cli demo-corpus --hours "$FOLD_HOURS" --out "$CORPUS" --overwrite > "$WORK/corpus.log" 2>&1 \
        && touch "$DONE" ) &
    CORPUS_PID=$!
fi

if [[ "$PHASE" != fold ]]; then
    stamp "bench_train.py --device $DEVICE"
    "$PY" benchmarks/bench_train.py --device "$DEVICE" --workdir "$WORK" "${MODEL_STEPS[@]}" --repeats 3 \
        --paths "$PATHS" --epoch-steps "$EPOCH_STEPS" --epoch-config "$MODEL" --caches none,device --sync-steps 20 \
        --training-only --json "$WORK/bench.json" | tee "$OUT/bench.txt"
    echo "bench_train exit ${PIPESTATUS[0]}"
    cp "$WORK/bench.json" "$OUT/bench.json" 2>/dev/null
fi
if [[ "$PHASE" == bench ]]; then stamp "bench done; waiting for the corpus (PHASE=fold uses it)"; wait; exit 0; fi

if [[ "$FOLD_COMPILE" == "auto" ]]; then
    FOLD_COMPILE=$("$PY" - "$WORK/bench.json" <<'EOF'
import json, sys
try:
    rows = json.load(open(sys.argv[1]))["training"]
    rate = {r["path"]: r["samples_per_s"] for r in rows if r["batch"] == 64}
    print("default" if rate.get("fast+compile", 0) > 1.05 * rate.get("fast", float("inf")) else "off")
except Exception:
    print("off")
EOF
)
fi

stamp "waiting for the corpus"
[[ -n "$CORPUS_PID" ]] && wait "$CORPUS_PID"
[[ -f "$DONE" ]] || { echo "demo corpus failed:"; tail -c 600 "$WORK/corpus.log"; exit 1; }
STORE="$WORK/fold_${FOLD_HOURS}h.h5"
stamp "building $STORE ($JOBS jobs)"
"$PY" -m serprep.cli build iemocap --root "$CORPUS" --out "$STORE" --balance --jobs "$JOBS" --overwrite -q \
    || { echo "build failed"; exit 1; }
ls -l "$STORE"

# The budget stops training after the first epoch that ends past it; keep a minute for that
# epoch, the test pass and the report.
LEFT=$((DEADLINE_S - (SECONDS - T0) - 60))
(( LEFT < FOLD_BUDGET_S )) && FOLD_BUDGET_S=$LEFT
if (( FOLD_BUDGET_S < 20 )); then stamp "no time left for the fold (run PHASE=fold separately)"; exit 0; fi
stamp "time_fold.py: $MODEL, --cache device, --compile $FOLD_COMPILE, $FOLD_EPOCHS epochs, budget ${FOLD_BUDGET_S} s"
"$PY" benchmarks/time_fold.py --store "$STORE" --device "$DEVICE" --config "$MODEL" --cache device --compile "$FOLD_COMPILE" \
    --epochs "$FOLD_EPOCHS" --budget-s "$FOLD_BUDGET_S" --out "$WORK/fold_run" --json "$OUT/fold.json" \
    | tee "$OUT/fold.txt"
echo "time_fold exit ${PIPESTATUS[0]}"
stamp "done"
