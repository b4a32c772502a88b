"""An evaluation stage cold and warm, side by side: `dvc repro -s -f evaluate@P` in a workspace
where `ppg run` has run (its models trained), each round once as a fresh process (cold: it
imports torch, transformers, peft and MLflow itself) and once handed to a `ppg warm` process
(ppg.warm), started and stopped by the pipeline's own start_warm and stop_warm. The stage's
outputs must be the same byte for byte. Each run logs its evaluation into the model's MLflow run
again: use a scratch clone.

    python benchmarks/warm_start.py --workspace WS [--policy k3] [--rounds 2]
"""

import argparse
import logging
import os
import subprocess
import sys
import time
from pathlib import Path


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--workspace", type=Path, required=True)
    ap.add_argument("--policy", default="k3")
    ap.add_argument("--rounds", type=int, default=2)
    a = ap.parse_args()
    from flows.pipeline import stage_env, start_warm, stop_warm
    from ppg.config import load_params

    ws = a.workspace.resolve()
    os.chdir(ws)
    out = ws / load_params(ws / "params.yaml").eval.out / a.policy
    t = time.perf_counter()
    warm = start_warm("")  # as the pipeline starts it, with its stages' environment
    ready = time.perf_counter() - t
    cold, hot = stage_env(""), stage_env("", str(warm[1]))
    times, outputs = {"cold": [], "warm": []}, {}
    try:
        for _ in range(a.rounds):
            for name, e in (("cold", cold), ("warm", hot)):
                t = time.perf_counter()
                r = subprocess.run([str(Path(sys.executable).parent / "dvc"), "repro", "-s", "-f",
                                    f"evaluate@{a.policy}"], env=e, capture_output=True, text=True)
                times[name].append(time.perf_counter() - t)
                if r.returncode or "not started warm" in r.stderr:
                    sys.exit(f"{name}: exit {r.returncode}\n{r.stdout[-2000:]}{r.stderr[-2000:]}")
                outputs.setdefault(name, []).append({f.name: f.read_bytes() for f in sorted(out.iterdir())})
    finally:
        served = stop_warm(warm, logging.getLogger("warm_start"))
    same = all(o == outputs["cold"][0] for runs in outputs.values() for o in runs)
    print(f"`dvc repro -s -f evaluate@{a.policy}` in {ws}; the warm process listened after {ready:.1f} s "
          f"(once per pipeline run) and ran {sum(' exited 0 ' in w for w in served)} stage(s)\n")
    print("| path | seconds per stage (rounds) | outputs (" + ", ".join(outputs["cold"][0]) + ") |")
    print("|---|---|---|")
    for name, ts in times.items():
        print(f"| {name} | {', '.join(f'{t:.1f}' for t in ts)} | {'the same' if same else 'DIFFER'} |")
    mean = {k: sum(v) / len(v) for k, v in times.items()}
    print(f"\nratio cold / warm: {mean['cold'] / mean['warm']:.2f}x")


if __name__ == "__main__":
    main()
