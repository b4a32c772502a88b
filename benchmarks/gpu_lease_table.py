"""The table of docs/results.md's H100 lease run, from the cells that came back from it
(docs/results/gpu-lease/cells/<id>/: cell.json and the scored turns). One fold of one domain, so
the same pooling and table as `ppg study-real` / `ppg study-report`, over what is there.
Run from the repository root: .venv/bin/python benchmarks/gpu_lease_table.py"""
import json
from pathlib import Path

from ppg.config import load_params
from ppg.study.real import real_summary
from ppg.study.report import real_table

root = Path("docs/results/gpu-lease")
cells = [json.loads(f.read_text()) for f in sorted(root.glob("cells/*/cell.json"))
         if (f.parent / "turns.jsonl").exists()]
print(real_table(real_summary(load_params("params.yaml"), root, cells)))
