#!/usr/bin/env bash
# One GPU check of the data path and throughput (issue 17), under 8 minutes on one H100-class GPU:
#   1. the CUDA tests                      python -m pytest -q tests -k cuda
#   2. corruption cost on CUDA             benchmarks.corruptions --device cuda --quick, and batched vs per image
#   3. throughput, harness vs bare loop    tent/eata/cotta/ecotta on ResNet-50 (batch 64, 224², bf16,
#                                          channels-last) and WRN-28-10 (batch 200); random weights (said so)
#   4. --compile --precision amp vs a plain fp32 eager loop (Tent, ResNet-50)
#   5. memory table                        benchmarks.memory --device cuda (adapt_mb beside peak_device_mb;
#                                          EcoTTA >= 80 % below CoTTA in real peak GPU memory)
# Every figure goes to one file: $OUT/gpu_check.txt when $OUT is set, else ./gpu_check_out/gpu_check.txt
# (JSON details beside it).
#
#   bash benchmarks/gpu_check.sh             # on a GPU machine, from the repository root
#   bash benchmarks/gpu_check.sh --dry-run   # the same commands, tiny and on the CPU (checks the script runs)
set -u
cd "$(dirname "$0")/.."

DRY=0
if [ "${1:-}" = "--dry-run" ]; then DRY=1; fi
DEST="${OUT:-./gpu_check_out}"
mkdir -p "$DEST"
REPORT="$DEST/gpu_check.txt"
: > "$REPORT"
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
START=$(date +%s)
FAILED=0

say() { echo "$*" | tee -a "$REPORT"; }

# step NAME SECONDS CMD... : run with a time limit, output into the report, note failures and keep going
step() {
    local name="$1" limit="$2"
    shift 2
    say ""
    say "=== $name ($(($(date +%s) - START)) s elapsed; limit ${limit} s)"
    say "\$ $*"
    timeout "$limit" "$@" 2>&1 | grep -v "DeprecationWarning\|warnings.warn" | tee -a "$REPORT"
    local rc=${PIPESTATUS[0]}
    if [ "$rc" -ne 0 ]; then
        say "--- $name: exit status $rc$([ "$rc" -eq 124 ] && echo ' (time limit)')"
        FAILED=1
    fi
}

if [ "$DRY" -eq 1 ]; then
    DEV=cpu
    say "gpu_check DRY RUN: tiny versions of every command, on the CPU (no figure here is a GPU figure)"
else
    DEV=cuda
    say "gpu_check on $(python -c 'import torch; print(torch.cuda.get_device_name(0) if torch.cuda.is_available() else "NO CUDA DEVICE")')"
fi
python -c 'import torch, torchvision; print("torch", torch.__version__, "torchvision", torchvision.__version__, "cuda", torch.version.cuda)' | tee -a "$REPORT"
git log -1 --format='commit %H %s' 2>/dev/null | tee -a "$REPORT"

if [ "$DRY" -eq 1 ]; then
    step "CUDA tests (dry: collected, skipped on CPU)" 120 \
        python -m pytest -q -p no:cacheprovider tests/test_device_corruption.py tests/test_decode.py -k cuda
    step "corruption benchmark" 120 python -m benchmarks.corruptions --device cpu --quick --corruptions fog contrast --ref-images 1
    step "corruption cost: batched vs per image" 120 \
        python -m benchmarks.throughput --corruption-costs --device cpu --batch-size 4
    step "throughput ResNet-50 (random weights)" 300 \
        python -m benchmarks.throughput --device cpu --model resnet50 --precision fp32 --methods tent --batch-size 4 \
        --limit 4 --domains contrast --repeats 1 --out "$DEST/throughput_resnet50.json"
    step "throughput CIFAR model" 300 \
        python -m benchmarks.throughput --device cpu --model resnet20 --methods tent,eata,cotta,ecotta --batch-size 8 \
        --limit 8 --domains fog --repeats 1 --n-aug 2 --out "$DEST/throughput_wrn28.json"
    step "amp vs plain fp32 eager (dry: without --compile, which takes minutes on a CPU)" 300 \
        python -m benchmarks.throughput --device cpu --model resnet20 --methods tent --precision amp --batch-size 8 \
        --limit 8 --domains contrast --repeats 1 --out "$DEST/throughput_amp.json"
    step "memory table" 300 \
        python -m benchmarks.memory --device cpu --quick --models resnet20 --methods source,tent,cotta,ecotta \
        --csv "$DEST/memory.csv"
else
    step "CUDA tests" 120 python -m pytest -q -p no:cacheprovider tests -k cuda
    step "corruption benchmark" 60 python -m benchmarks.corruptions --device cuda --quick
    step "corruption cost: batched vs per image" 40 \
        python -m benchmarks.throughput --corruption-costs --device cuda --model resnet50 --batch-size 64 \
        --out "$DEST/corruption_costs.json"
    step "throughput ResNet-50, batch 64, bf16, channels-last (random weights)" 120 \
        python -m benchmarks.throughput --device cuda --model resnet50 --precision amp --batch-size 64 --limit 64 \
        --methods tent,eata,cotta,ecotta --domains gaussian_noise,fog,contrast --repeats 3 \
        --out "$DEST/throughput_resnet50.json"
    step "throughput WRN-28-10, batch 200 (random weights)" 120 \
        python -m benchmarks.throughput --device cuda --model wrn28 --batch-size 200 --limit 400 \
        --methods tent,eata,cotta,ecotta --domains gaussian_noise,fog,contrast --repeats 3 \
        --out "$DEST/throughput_wrn28.json"
    step "--compile --precision amp vs plain fp32 eager (Tent, ResNet-50; compile time included)" 150 \
        python -m benchmarks.throughput --device cuda --model resnet50 --methods tent --compile --precision amp \
        --batch-size 64 --limit 1000 --domains contrast --repeats 1 --out "$DEST/throughput_compile.json"
    step "memory table (adapt_mb beside peak_device_mb)" 120 \
        python -m benchmarks.memory --device cuda --models resnet50,wrn28 --methods source,norm,tent,eata,sar,cotta,rotta,ecotta \
        --csv "$DEST/memory.csv"
fi

say ""
say "=== done in $(($(date +%s) - START)) s; figures in $REPORT$([ "$FAILED" -ne 0 ] && echo '; SOME STEPS FAILED (see above)')"
exit "$FAILED"
