#!/usr/bin/env bash
# The real-data part of the K study on a CUDA machine: every Consistent-LLMs dialogue (no
# subsample, every judged turn scored), persona-grouped folds, every policy and the bc control,
# SmolLM2-135M with LoRA in bf16 at ZeRO-2. Same code as the CPU run (`ppg study-real`); only
# params differ. The defaults are the full grid (5 folds, 7 policies, 400 steps of batch 8 per
# cell); the environment narrows it to fit a short lease (docs/results.md gives what ran):
#   DOMAINS=therapy,chatting  POLICIES=bc,greedy,k3,full  FOLDS=2  STEPS=60  BATCH=8
#   MAX_LENGTH=1024  LR=5e-4  STUDY_OUT=study-real-gpu
# Run from the repository root after `make install TORCH_PIP_ARGS="--index-url <a CUDA wheel index>"`:
#   bash benchmarks/study_real_gpu.sh [DATA_DIR]   (default ../shared/data/consistent-llms/dialogues)
# Finished cells are read back, so a second call (or one with more DOMAINS) only trains what is
# missing. Cost measured on one H100 (docs/results.md section 2): 40-46 s per cell at 60 steps,
# ~30 s of it training; the rest was scoring, which then ran on the host CPU (fixed since: cells
# now record train_seconds, score_seconds and the device). At that rate the full grid's 195
# cells at 400 steps take about 10 hours (extrapolated from the training rate).
# Writes $STUDY_OUT/summary.json and docs/results/gpu/study-tables.md (+ plots).
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PY:-.venv/bin/python}"
DATA="${1:-../shared/data/consistent-llms/dialogues}"
"$PY" benchmarks/require_cuda.py
unset DS_ACCELERATOR
PARAMS=$(mktemp --suffix=.yaml)
"$PY" - "$PARAMS" <<'PYEOF'
import os, sys, yaml
env = lambda k, d: os.environ.get(k) or d
p = yaml.safe_load(open("params.yaml"))
p["study"]["out"] = "study-gpu"
p["study"]["real"] = {**p["study"].get("real", {}), "out": env("STUDY_OUT", "study-real-gpu"), "max_dialogues": 0,
                      "domains": env("DOMAINS", "chatting,education,therapy").split(","),
                      "policies": env("POLICIES", "bc,greedy,k2,k3,k5,full,segment").split(","),
                      "folds": int(env("FOLDS", 5)), "steps": int(env("STEPS", 400)),
                      "batch_size": int(env("BATCH", 8)), "lr": float(env("LR", 5.0e-4)),
                      "max_length": int(env("MAX_LENGTH", 2048)), "max_turns": 0}
ds = p["train"]["deepspeed"]
ds["bf16"] = {"enabled": True}
ds["zero_optimization"] = {"stage": 2}
# torch_adam stays: torch's AdamW is multi-tensor on CUDA, and DeepSpeed's fused Adam would be
# JIT-compiled with nvcc first (a minute or more per fresh machine) for a 135M model's LoRA weights.
print("study.real:", p["study"]["real"])
yaml.safe_dump(p, open(sys.argv[1], "w"))
PYEOF
time "$PY" -c "from ppg.cli import app; app()" study-real --data "$DATA" --params "$PARAMS"
"$PY" - "$PARAMS" <<'PYEOF'
import sys
from pathlib import Path
from ppg.config import load_params
from ppg.study.report import report
print("wrote", report(None, Path(load_params(sys.argv[1]).study.real.out) / "summary.json", Path("docs/results/gpu")))
PYEOF
