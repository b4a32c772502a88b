"""The table of docs/results.md's H100 lease run from the scored turns that came back from it
(docs/results/gpu-lease/<cell>/turns.jsonl): one fold of one domain, so no pooled summary.json.
Same metrics as `ppg study-real` (AUC with a persona-group bootstrap, weighted NLL and its change).
Run from the repository root: .venv/bin/python benchmarks/gpu_lease_table.py"""
import json
from pathlib import Path
from ppg.evaluate import mean_ci, offline_metrics
for d in sorted(Path("docs/results/gpu-lease").glob("*/turns.jsonl")):
    t = [json.loads(x) for x in d.read_text().splitlines()]
    m, ch = offline_metrics(t, 10), mean_ci([-x["weight"] * x["score"] for x in t if x["weight"] == x["weight"]])
    a, w = m["auc"], m["weighted_nll"]
    print(f"| {d.parent.name} | {a['mean']:.3f} [{a['lo']:.3f}, {a['hi']:.3f}] | {m['contradictions']} / {m['turns']} "
          f"| {w['mean']:.2f} ± {(w['hi'] - w['lo']) / 2:.2f} | {ch['mean']:.2f} ± {(ch['hi'] - ch['lo']) / 2:.2f} |")
