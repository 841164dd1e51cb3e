#!/usr/bin/env bash
# One device call on the one-H200 machine (issue 14): install the carried wheels (.whl-gpu, made by
# benchmarks/gpu_wheels.sh), build the fused kernels and FusedAdam for sm_90, optionally run GPU tests, then
# the side-by-side throughput benchmark (ours and the baselines in one command).
#   TESTS="tests/gpu/test_fp8_gpu.py ..." BENCH="--preset pythia-1.4b --impl ours hf ... --micro-batches 16" \
#   [BENCH2="--preset neox-20b --layers 8 ..."] [LORA="--micro-batch 16 ..." LORA2=...] bash benchmarks/speed_gpu_driver.sh
# Every step has a timeout under the whole run's deadline (DEADLINE_S); logs and results land in $OUT.
set -u -o pipefail
OUT=${OUT:-/tmp/speed-out}
mkdir -p "$OUT"
START=$(date +%s)
DEADLINE_S=${DEADLINE_S:-570}
export PYTHONUNBUFFERED=1 TORCH_CUDA_ARCH_LIST=9.0 MAX_JOBS=16 DS_ACCELERATOR=cuda
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
# build outputs under the checkout's ignored build/: a warm machine keeps them between calls, so the
# kernels (objects kept, ninja rebuilds only what changed) and FusedAdam are not compiled again
export NEOX_KERNELS_DIR=${NEOX_KERNELS_DIR:-$PWD/build/neox-kernels} TORCH_EXTENSIONS_DIR=${TORCH_EXTENSIONS_DIR:-$PWD/build/torch-extensions}
export TOKENIZERS_PARALLELISM=false

left() { echo $((DEADLINE_S - ($(date +%s) - START))); }
step() {  # step NAME MAX_SECONDS CMD...: CMD under a timeout of min(MAX, time left - 5)
  local name=$1 max=$2; shift 2
  local t; t=$(( $(left) - 5 )); [ "$t" -gt "$max" ] && t=$max
  if [ "$t" -lt 20 ]; then echo "=== $name: SKIPPED ($(left)s left)"; return 99; fi
  echo "=== $name (timeout ${t}s, t+$(( $(date +%s) - START ))s)"
  timeout --kill-after=5 "$t" "$@"
  local rc=$?
  echo "=== $name rc=$rc (t+$(( $(date +%s) - START ))s)"
  return $rc
}

{ date -u; nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.max.sm --format=csv; } \
  | tee "$OUT/env.txt"
step install 90 python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
  --target /tmp/site .whl-gpu/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD
python3 -c "import torch, deepspeed, transformers, torchao, liger_kernel, triton; print('torch', torch.__version__,
'deepspeed', deepspeed.__version__, 'transformers', transformers.__version__, 'torchao', torchao.__version__,
'triton', triton.__version__)" 2>&1 | grep -v Warning | tail -1 | tee -a "$OUT/env.txt"

step kernels-build 200 python3 -m trainer.kernels.build --out "$NEOX_KERNELS_DIR" --arch-list 9.0 --jobs 12 --keep-objects \
  >"$OUT/build.log" 2>&1 &
KPID=$!
step fused-adam-build 200 python3 -c "from deepspeed.ops.op_builder import FusedAdamBuilder; FusedAdamBuilder().load()" \
  >"$OUT/adam.log" 2>&1
wait $KPID
tail -2 "$OUT/build.log"

if [ -n "${TESTS:-}" ]; then
  # shellcheck disable=SC2086
  step gpu-tests "${TESTS_S:-200}" python3 -m pytest $TESTS -m gpu -n "${TEST_WORKERS:-3}" --dist loadfile -q \
    --basetemp /tmp/gpu-tests -p no:cacheprovider -rfE 2>&1 | tee "$OUT/tests.log" | grep -v "Warning" | tail -40
  tar czf "$OUT/gpu-tests-logs.tgz" -C /tmp/gpu-tests --exclude='*.pt' --exclude='*.safetensors' . 2>/dev/null
fi

# BENCH, BENCH2, ... BENCH6 (other shapes, say): each one command, its implementations side by side
for n in "" 2 3 4 5 6; do
  var=BENCH$n
  [ -n "${!var:-}" ] || continue
  # shellcheck disable=SC2086
  step "bench$n" $(( $(left) - 8 )) python3 benchmarks/e2e_throughput.py ${!var} --out "$OUT/e2e$n.jsonl" 2>&1 \
    | tee "$OUT/bench$n.log" | grep -E "^e2e|Error|rror:|^impl|^(ours|hf)" | grep -v "Warning"
done
# LORA, LORA2, ...: benchmarks/lora_bench.py commands (issue 15), each its implementations side by side
for n in "" 2 3 4 5 6; do
  var=LORA$n
  [ -n "${!var:-}" ] || continue
  # shellcheck disable=SC2086
  step "lora$n" $(( $(left) - 8 )) python3 benchmarks/lora_bench.py ${!var} --out "$OUT/lora$n.jsonl" 2>&1 \
    | tee "$OUT/lora$n.log" | grep -E "^lora_bench|Error|rror:" | grep -v "Warning"
done
echo "=== done (t+$(( $(date +%s) - START ))s)"
