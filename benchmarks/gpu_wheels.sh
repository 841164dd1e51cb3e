#!/usr/bin/env bash
# The wheels the GPU machine lacks, into .whl-gpu/ for the device tool's `carry` (that machine has torch,
# triton, ninja and numpy, and cannot download). Versions are the project's pins; the index is this
# host's own pip configuration.   bash benchmarks/gpu_wheels.sh [DEST]
set -euo pipefail
cd "$(dirname "$0")/.."
dest=${1:-.whl-gpu}
mkdir -p "$dest"
if [ "$dest" = .whl-gpu ] && ! grep -qx '/.whl-gpu/' .git/info/exclude 2>/dev/null; then
  echo '/.whl-gpu/' >>.git/info/exclude
fi
# the GPU machine runs CPython 3.12 on x86-64
binary=(--no-deps --only-binary=:all: --python-version 3.12 --implementation cp
  --platform manylinux_2_28_x86_64 --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64
  --platform manylinux2014_x86_64)
python3 -m pip download -q "${binary[@]}" -d "$dest" \
  transformers==5.24.0 regex==2026.11.19 determined==0.38.1 appdirs==1.4.4 ruamel.yaml==0.19.1 \
  hjson==3.1.0 pydantic==2.14.4 pydantic-core==2.50.5 annotated-types==0.8.0 typing-extensions==4.16.0 \
  typing-inspection==0.4.5 torchao==0.18.0 liger-kernel==0.8.5 bitsandbytes==0.50.2
# DeepSpeed publishes a source archive only: its pure-Python wheel (ops are built there just in time)
DS_BUILD_OPS=0 python3 -m pip wheel -q --no-deps -w "$dest" deepspeed==0.19.8
ls "$dest"
