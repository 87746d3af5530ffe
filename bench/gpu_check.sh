#!/usr/bin/env bash
# GPU readiness in one run, under 8 minutes on one NVIDIA GPU: the GPU's name, the test suite's
# GPU-marked tests (pytest -m gpu), then bench/gpu_check.py (matmul peak, pretraining tokens/s
# and MFU of the gpt2-124m design, SFT and DPO steps/s, decode tokens/s).
#
#   bash bench/gpu_check.sh            # about 5-7 minutes
#   bash bench/gpu_check.sh --quick    # about 3-4 minutes
#   bash bench/gpu_check.sh --quick --device cpu   # a dry run without a GPU (tests skip)
#
# Arguments after --quick go to bench/gpu_check.py. PYTHON picks the interpreter (default:
# python, the active venv's); it needs a CUDA build of torch. Exit status: 0 when the tests
# pass and the benchmark finishes; 1 when a test fails; 2 when the benchmark fails; 3 when
# torch sees no GPU (and --device cpu was not asked for); 124 when a part ran out of time.
set -u -o pipefail

cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python}
BUDGET=${GPU_CHECK_BUDGET_S:-470}  # the whole script: under 8 minutes with room to exit
TESTS_LIMIT=${GPU_CHECK_TESTS_S:-180}
QUICK=()
if [ "${1:-}" = "--quick" ]; then
    QUICK=(--quick)
    shift
fi
CPU_RUN=0
for arg in "$@"; do
    case "$arg" in --device=cpu|cpu) CPU_RUN=1 ;; esac
done
start=$SECONDS
left() { echo $((BUDGET - (SECONDS - start))); }

echo "== GPU"
if command -v nvidia-smi >/dev/null 2>&1; then
    timeout 20 nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm \
        --format=csv,noheader || echo "nvidia-smi failed"
else
    echo "nvidia-smi not found"
fi
timeout 60 "$PYTHON" - <<'EOF'
import torch
cuda = torch.cuda.is_available()
name = torch.cuda.get_device_name() if cuda else "none"
print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, device: {name}")
EOF
if ! timeout 60 "$PYTHON" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)"
then
    if [ "$CPU_RUN" = 0 ]; then
        echo "torch sees no CUDA device: install a CUDA build of torch on a GPU machine" \
             "(or pass --device cpu for a dry run)" >&2
        exit 3
    fi
    echo "no CUDA device: a dry run on the CPU (the GPU tests skip)"
fi

echo "== GPU tests (pytest -m gpu, at most ${TESTS_LIMIT} s)"
timeout -k 10 "$TESTS_LIMIT" "$PYTHON" -m pytest -m gpu -q -p no:cacheprovider
tests_rc=$?
if [ "$tests_rc" = 124 ] || [ "$tests_rc" = 137 ]; then
    echo "GPU tests ran out of time (${TESTS_LIMIT} s)" >&2
fi

bench_limit=$(($(left) - 15))
echo "== bench/gpu_check.py ${QUICK[*]} $* (at most ${bench_limit} s)"
if [ "$bench_limit" -lt 30 ]; then
    echo "no time left for the benchmark" >&2
    bench_rc=124
else
    timeout -k 10 "$bench_limit" "$PYTHON" bench/gpu_check.py "${QUICK[@]}" "$@"
    bench_rc=$?
fi

echo "== done in $((SECONDS - start)) s: tests exit ${tests_rc}, benchmark exit ${bench_rc}"
if [ "$tests_rc" = 124 ] || [ "$tests_rc" = 137 ] || [ "$bench_rc" = 124 ] \
        || [ "$bench_rc" = 137 ]; then
    exit 124
fi
if [ "$tests_rc" != 0 ]; then
    exit 1
fi
if [ "$bench_rc" != 0 ]; then
    exit 2
fi
exit 0
