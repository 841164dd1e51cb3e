#!/usr/bin/env bash
# One device call on a machine of several H200s (issue 9, item 3): full fine-tuning steps of the
# GPT-NeoX-20B shape with ZeRO-3 over every GPU of the host, bf16, seq 2048, activation checkpointing;
# tokens/s per GPU, MFU, peak memory, then the time to save the weights.
#   bash benchmarks/gpu_wheels.sh                  (here, once: wheels into .whl-gpu/)
#   device run, kind nvidia-h200-x4, carry .whl-gpu:  bash benchmarks/neox20b_driver.sh
# Logs and JSON lines land in $OUT. The checkpoint is the gathered 16-bit weights (41 GB): the full
# resumable state (about 290 GB with the fp32 optimizer) does not fit the machine's disk.
set -u -o pipefail
OUT=${OUT:-/tmp/neox20b-out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 TORCH_CUDA_ARCH_LIST=9.0 MAX_JOBS=16 DS_ACCELERATOR=cuda
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
export NEOX_KERNELS_DIR=/tmp/neox-kernels
{
  date -u; nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv; nproc; df -h /tmp
} >"$OUT/env.txt" 2>&1
cat "$OUT/env.txt"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
  .whl-gpu/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD

# Build the fused kernels and FusedAdam once, before the ranks would race to build them.
python3 -m trainer.kernels.build --out "$NEOX_KERNELS_DIR" --arch-list 9.0 --jobs 8 >"$OUT/build.log" 2>&1 &
python3 -c "from deepspeed.ops.op_builder import FusedAdamBuilder; FusedAdamBuilder().load()" >>"$OUT/build.log" 2>&1
wait
tail -2 "$OUT/build.log"

gpus=$(nvidia-smi -L | wc -l)
read -ra micro_batches <<<"${MICRO_BATCHES:-4 8}"
timeout --kill-after=20 "${BENCH_TIMEOUT_S:-420}" torchrun --nproc-per-node "$gpus" benchmarks/e2e_throughput.py \
  --impl ours --preset neox-20b --zero 3 --checkpoint-activations --micro-batches "${micro_batches[@]}" \
  --steps "${STEPS:-4}" --warmup 2 --save-checkpoint /tmp/neox20b-ckpt --save-weights-only \
  --out "$OUT/neox20b.jsonl" 2>&1 | tee "$OUT/log.txt" | grep -E "^e2e|Error|rror:"
echo "torchrun rc=${PIPESTATUS[0]}"
