#!/usr/bin/env bash
# The first check on a GPU machine, in one short run (under 6 minutes including the build):
#   1. build kdi_fast/_C for the present GPU's architecture only (KDI_FAST_CUDA_ARCHS from the device);
#   2. the CUDA/Triton test subset (tests parametrised over devices run their cuda cases; Triton kernels run
#      compiled, not interpreted);
#   3. the transform benchmark (--quick) and the engine on random-weight models of SmolLM2-135M's shape;
#   4. issue 14's speed goal: the 1,000 masks of method="sparse" (n = 64, chat template, all 30 layers, random
#      weights) through the engine against the same masks as independent Hugging Face forwards, under embedding
#      and attention masking (bench_sparse_speed.py; needs SmolLM2's tokenizer: $KDI_TOKENIZER, by default
#      runs/tokenizer, then ~/.cache/kdi_fast/smollm2-135m-instruct-tokenizer; to send it with the repository:
#      cp -r ~/.cache/kdi_fast/smollm2-135m-instruct-tokenizer runs/tokenizer, and carry runs/tokenizer, 3.4 MB);
#   5. everything it printed and measured under $OUT (default benchmarks/results/gpu_check/).
#
# Made for the machines this project may be lent: an image with its own PyTorch (2.11, Python 3.12) and Triton,
# no internet, nothing installed with pip there, 64 MiB of files carried in all (so random weights, no GGUF).
# A part whose requirement is missing (nvcc, cmake, pybind11, pytest, transformers) is reported as skipped
# with the reason, in the log and in status.json; nothing is skipped silently.
#
#   bash benchmarks/gpu_check.sh              # on the GPU machine, from the repository root
#   bash benchmarks/gpu_check.sh --dry-run    # anywhere: print the plan and check the files it names exist
#
# Environment: PYTHON (default python3), OUT (results folder), GPU_CHECK_SECONDS (per-step limit, default 150).
set -uo pipefail

cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
OUT=${OUT:-benchmarks/results/gpu_check}
LIMIT=${GPU_CHECK_SECONDS:-150}
DRY=0
[[ "${1:-}" == "--dry-run" ]] && DRY=1

TESTS=(tests/test_masking.py tests/test_triton_masked_embed.py tests/test_triton_mobius.py
       tests/test_triton_target_logprob.py tests/test_transform.py tests/test_engine_forward.py)
TEST_FILTER="cuda or triton or gpu"

mkdir -p "$OUT"
STATUS="$OUT/status.json"
echo "{" > "$STATUS"
first=1
record() {  # record STEP STATUS REASON SECONDS
    local sep=","; [[ $first == 1 ]] && sep="" && first=0
    printf '%s\n  "%s": {"status": "%s", "detail": "%s", "seconds": %s}' "$sep" "$1" "$2" "${3//\"/\'}" "$4" >> "$STATUS"
    echo "[gpu_check] $1: $2${3:+ ($3)} in ${4}s"
}
finish() { printf '\n}\n' >> "$STATUS"; echo "[gpu_check] results in $OUT"; }

run_step() {  # run_step NAME COMMAND...: run with the per-step limit, log to $OUT/NAME.log
    local name=$1; shift
    local start=$SECONDS
    if [[ $DRY == 1 ]]; then
        record "$name" "planned" "$*" 0
        return 0
    fi
    timeout "$LIMIT" "$@" > "$OUT/$name.log" 2>&1
    local rc=$?
    local took=$((SECONDS - start))
    if [[ $rc == 0 ]]; then record "$name" "ok" "" "$took"
    elif [[ $rc == 124 ]]; then record "$name" "timeout" "over ${LIMIT}s, see $name.log" "$took"
    else record "$name" "failed" "exit $rc, see $name.log" "$took"; fi
    tail -n 5 "$OUT/$name.log"
}

has_module() { "$PYTHON" -c "import $1" > /dev/null 2>&1; }

# ---- what this machine has ----------------------------------------------------------------------------
if [[ $DRY == 1 ]]; then
    for f in "${TESTS[@]}" benchmarks/bench_transform.py benchmarks/gpu_engine.py benchmarks/bench_sparse_speed.py \
             benchmarks/data/sparse_speed_prompt.txt setup.py CMakeLists.txt; do
        [[ -e $f ]] || { echo "[gpu_check] missing file: $f"; record "files" "failed" "missing $f" 0; finish; exit 1; }
    done
    ARCH="(from the GPU)"
else
    if ! "$PYTHON" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
        echo "[gpu_check] no CUDA device visible to $PYTHON: this script is for a GPU machine (--dry-run elsewhere)"
        record "device" "failed" "torch.cuda.is_available() is False" 0; finish; exit 1
    fi
    "$PYTHON" -c "import torch; print('[gpu_check]', torch.__version__, torch.cuda.get_device_name(0))"
    ARCH=$("$PYTHON" -c "import torch; a, b = torch.cuda.get_device_capability(0); print(f'{a}{b}')")
fi

# ---- 1. build for this GPU only -----------------------------------------------------------------------
missing=""
command -v nvcc > /dev/null || missing="nvcc "
command -v cmake > /dev/null || has_module cmake || missing+="cmake "
has_module pybind11 || missing+="pybind11 "
if [[ $DRY == 1 || -z $missing ]]; then
    run_step build env KDI_FAST_CUDA=1 KDI_FAST_CUDA_ARCHS="$ARCH" "$PYTHON" setup.py build_ext --inplace
else
    record build "skipped" "missing: ${missing% }; the Triton and torch backends still run" 0
fi

# ---- 2. the CUDA/Triton tests -------------------------------------------------------------------------
if [[ $DRY == 1 ]] || { has_module pytest && has_module transformers; }; then
    run_step tests "$PYTHON" -m pytest -q -x -p no:cacheprovider "${TESTS[@]}" -k "$TEST_FILTER"
else
    record tests "skipped" "pytest or transformers is not installed in this image" 0
fi

# ---- 3. benchmarks ------------------------------------------------------------------------------------
run_step transform "$PYTHON" benchmarks/bench_transform.py --quick --out "$OUT"
if [[ $DRY == 1 ]] || has_module transformers; then
    run_step engine "$PYTHON" benchmarks/gpu_engine.py --out "$OUT/engine.json"
else
    record engine "skipped" "transformers is not installed in this image (random-weight SmolLM2-shape models need it)" 0
fi
TOKENIZER=${KDI_TOKENIZER:-runs/tokenizer}
[[ -e $TOKENIZER/tokenizer.json ]] || TOKENIZER=${HOME:-~}/.cache/kdi_fast/smollm2-135m-instruct-tokenizer
for masking in embedding attention; do
    if [[ $DRY == 1 ]] || { has_module transformers && [[ -e $TOKENIZER/tokenizer.json ]]; }; then
        run_step "sparse_speed_$masking" "$PYTHON" benchmarks/bench_sparse_speed.py --random-weights --device cuda \
            --tokenizer "$TOKENIZER" --prompt-file benchmarks/data/sparse_speed_prompt.txt --chat-template \
            --target "The answer is" --layers 30 --n 64 --budgets 1000 --rounds 3 --sample 256 --hf-batch 64 \
            --masking "$masking" --out "$OUT/sparse_speed_$masking.json"
    else
        record "sparse_speed_$masking" "skipped" "transformers or SmolLM2's tokenizer ($TOKENIZER) is missing: copy it to runs/tokenizer and carry it" 0
    fi
done
finish
