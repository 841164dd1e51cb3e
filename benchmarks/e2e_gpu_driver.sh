#!/usr/bin/env bash
# One device call (the GPU machine, one H200): install the carried wheels, build the fused kernels and
# DeepSpeed's FusedAdam for sm_90, run the GPU tests, then the end-to-end throughput benchmark.
#   bash benchmarks/e2e_gpu_driver.sh   (from the repository root; wheels in .whl-gpu/, logs in $OUT)
# Every step has a timeout and the whole run a deadline (DEADLINE_S), so the last steps are skipped
# rather than the call killed; what each step printed is in $OUT/log.txt.
set -u -o pipefail
OUT=${OUT:-/tmp/e2e-out}
mkdir -p "$OUT"
START=$(date +%s)
DEADLINE_S=${DEADLINE_S:-540}
export PYTHONUNBUFFERED=1 TORCH_CUDA_ARCH_LIST=9.0 MAX_JOBS=16 DS_ACCELERATOR=cuda
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
export NEOX_KERNELS_DIR=/tmp/neox-kernels TOKENIZERS_PARALLELISM=false

left() { echo $((DEADLINE_S - ($(date +%s) - START))); }
# step NAME MAX_SECONDS MIN_SECONDS CMD...: run CMD with a timeout of min(MAX, time left); skip if under MIN left
step() {
  local name=$1 max=$2 min=$3; shift 3
  local t; t=$(left); [ "$t" -gt "$max" ] && t=$max
  if [ "$t" -lt "$min" ]; then echo "=== $name: SKIPPED ($(left)s left)"; return 99; fi
  echo "=== $name (timeout ${t}s, t+$(( $(date +%s) - START ))s)"
  timeout --kill-after=10 "$t" "$@"
  local rc=$?
  echo "=== $name rc=$rc (t+$(( $(date +%s) - START ))s)"
  return $rc
}

{
  date -u; nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.max.sm --format=csv
  nproc; python3 --version
} > "$OUT/env.txt" 2>&1
cat "$OUT/env.txt"

step install 120 10 python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
  --target /tmp/site .whl-gpu/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD
python3 -c "import torch, deepspeed, transformers, determined, triton; print('torch', torch.__version__, 'deepspeed',
deepspeed.__version__, 'transformers', transformers.__version__, 'determined', determined.__version__, 'triton',
triton.__version__)" 2>&1 | grep -v Warning | tail -2 | tee -a "$OUT/env.txt"

# the fused kernels and FusedAdam compile side by side
step kernels-build 240 60 python3 -m trainer.kernels.build --out "$NEOX_KERNELS_DIR" --arch-list 9.0 --jobs 12 &
KPID=$!
step fused-adam-build 240 60 python3 -c "from deepspeed.ops.op_builder import FusedAdamBuilder; FusedAdamBuilder().load(); print('FusedAdam built')" 2>&1 | grep -v "Warning\|warn" | tail -3
wait $KPID
timeout 90 python3 -m trainer.doctor 2>&1 | tail -12

# the GPU tests: the trainer runs and the Determined trial side by side (two pytest workers)
XDIST=()
python3 -c "import xdist" 2>/dev/null && XDIST=(-n 2 --dist loadfile)
step gpu-tests 300 120 python3 -m pytest tests/gpu -m gpu "${XDIST[@]}" -rA -q --basetemp /tmp/gpu-tests -p no:cacheprovider \
  2>&1 | tee "$OUT/tests.log" | grep -v "^PASSED\|Warning" | tail -40
python3 - "$OUT/gpu-runs.json" <<'PY' 2>&1 | tail -3
import json, sys, pathlib
out = {}
for m in pathlib.Path("/tmp/gpu-tests").rglob("metrics.jsonl"):
    run = m.parent.parent.name
    out[run] = {"metrics": [json.loads(x) for x in m.read_text().splitlines()]}
    log = m.parent.parent / "console.log"
    if log.exists():
        out[run]["console_tail"] = log.read_text()[-2500:]
for j in pathlib.Path("/tmp/gpu-tests").rglob("out.json"):
    out["determined"] = json.loads(j.read_text())
pathlib.Path(sys.argv[1]).write_text(json.dumps(out, indent=1))
print("gpu-runs.json:", sorted(out))
PY

# end-to-end throughput, Pythia-1.4B shape, bf16, seq 2048, ZeRO-1: eager first, then torch.compile
BENCH=(python3 benchmarks/e2e_throughput.py --out "$OUT/e2e.jsonl" --steps 8 --warmup 3)
if [ "${E2E_MODE:-full}" = verify ]; then  # a second look: the same runs again for the spread, no compile
  step e2e-ours 150 40 "${BENCH[@]}" --impl ours --micro-batches 4 8 16 2>&1 | grep -E "^e2e|Error|rror:" | head -20
  step e2e-hf 150 40 "${BENCH[@]}" --impl hf --micro-batches 4 8 2>&1 | grep -E "^e2e|Error|rror:" | head -20
else
step e2e-ours 150 40 "${BENCH[@]}" --impl ours --micro-batches 4 8 --profile "$OUT/profile-ours.txt" 2>&1 | grep -E "^e2e|Error|rror:|Self CUDA|^-|^ *aten|^ *void|^ *[a-z_]+.*%" | head -40
step e2e-hf 150 40 "${BENCH[@]}" --impl hf --micro-batches 4 8 --profile "$OUT/profile-hf.txt" 2>&1 | grep -E "^e2e|Error|rror:" | head -20
step e2e-ours-compile 150 60 env NEOX_KERNELS=0 "${BENCH[@]}" --impl ours --compile --micro-batches 8 4 2>&1 | grep -E "^e2e|Error|rror:" | head -20
step e2e-hf-compile 150 60 "${BENCH[@]}" --impl hf --compile --micro-batches 8 4 2>&1 | grep -E "^e2e|Error|rror:" | head -20
step e2e-ours-16 80 40 "${BENCH[@]}" --impl ours --micro-batches 16 2>&1 | grep -E "^e2e|Error|rror:" | head -20
fi
echo "=== summary (t+$(( $(date +%s) - START ))s)"
python3 -c "
import json, sys
for l in sys.stdin:
    r = json.loads(l)
    print(f\"{r['impl']:<16} mb {r['micro_batch']:>2} {r['tokens_per_s']:>9,.0f} tok/s MFU {100*r['mfu_palm']:5.1f}% (6N+12lhs) {100*r['mfu_model']:5.1f}% (model) {r['peak_mem_gib']:.0f} GiB\")
" <"$OUT/e2e.jsonl" 2>/dev/null
grep -E "passed|failed" "$OUT/tests.log" | tail -1
