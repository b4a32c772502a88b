#!/usr/bin/env bash
# The real-data part of the K study on a CUDA machine: every Consistent-LLMs dialogue (no
# subsample, every judged turn scored), 5 persona-grouped folds, every policy, 400 steps of
# batch 8 per cell, SmolLM2-135M with LoRA in bf16 at ZeRO-2. Same code as the CPU run
# (`ppg study-real`); only params differ.
# Run from the repository root after `make install TORCH_PIP_ARGS="--index-url <a CUDA wheel index>"`:
#   bash benchmarks/study_real_gpu.sh [DATA_DIR]   (default ../shared/data/consistent-llms/dialogues)
# Writes study-real-gpu/ (summary.json) and docs/results/gpu/study-tables.md.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PY:-.venv/bin/python}"
DATA="${1:-../shared/data/consistent-llms/dialogues}"
"$PY" benchmarks/require_cuda.py
unset DS_ACCELERATOR
PARAMS=$(mktemp --suffix=.yaml)
"$PY" - "$PARAMS" <<'PYEOF'
import sys, yaml
p = yaml.safe_load(open("params.yaml"))
p["study"]["out"] = "study-gpu"
p["study"]["real"] = {**p["study"].get("real", {}), "out": "study-real-gpu", "max_dialogues": 0, "folds": 5,
                      "policies": ["greedy", "k2", "k3", "k5", "full", "segment"], "steps": 400, "batch_size": 8,
                      "lr": 5.0e-4, "max_length": 2048, "max_turns": 0}
ds = p["train"]["deepspeed"]
ds["bf16"] = {"enabled": True}
ds["zero_optimization"] = {"stage": 2}
ds["optimizer"]["params"].pop("torch_adam", None)  # fused CUDA Adam
yaml.safe_dump(p, open(sys.argv[1], "w"))
PYEOF
time "$PY" -c "from ppg.cli import app; app()" study-real --data "$DATA" --params "$PARAMS"
"$PY" - "$PARAMS" <<'PYEOF'
import sys
from pathlib import Path
from ppg.study_report import report
print("wrote", report(None, Path("study-real-gpu/summary.json"), Path("docs/results/gpu")))
PYEOF
