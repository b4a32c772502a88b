#!/usr/bin/env bash
# The trainer benchmark on a CUDA machine: SmolLM2-135M, bf16, ZeRO-2 vs the bare loop, tokens/s
# and MFU. Run from the repository root after `make install TORCH_PIP_ARGS="--index-url <a CUDA
# wheel index>"` (or with any venv that has a CUDA build of torch 2.13.0 and this project).
#   bash benchmarks/gpu.sh [extra args for benchmarks/trainer.py]
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PY:-.venv/bin/python}"
"$PY" benchmarks/require_cuda.py
unset DS_ACCELERATOR
exec "$PY" benchmarks/trainer.py --only smollm2-135m --bf16 --zero2-only --batch 8 --length 1024 --steps 20 --warmup 5 "$@"
