"""An evaluation stage cold and warm, side by side: `dvc repro -s -f evaluate@P` in a workspace
where `ppg run` has run (its models trained), each round once as a fresh process (cold: it
imports torch, transformers, peft and MLflow itself) and once handed to a `ppg warm` process
(ppg.warm), as the pipeline runs its evaluations. The stage's outputs must be the same byte
for byte. Each run logs its evaluation into the model's MLflow run again: use a scratch clone.

    python benchmarks/warm_start.py --workspace WS [--policy k3] [--rounds 2]
"""

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--workspace", type=Path, required=True)
    ap.add_argument("--policy", default="k3")
    ap.add_argument("--rounds", type=int, default=2)
    a = ap.parse_args()
    from ppg.warm import WARM_ENV
    from ppg.config import load_params

    ws, bin_ = a.workspace.resolve(), Path(sys.executable).parent
    out = ws / load_params(ws / "params.yaml").eval.out / a.policy
    env = {k: v for k, v in os.environ.items() if k != WARM_ENV}
    env["PATH"] = f"{bin_}{os.pathsep}{env['PATH']}"
    folder = Path(tempfile.mkdtemp(prefix="ppg-warm-bench-"))
    sock = folder / "socket"
    hot = {**env, WARM_ENV: str(sock)}
    t = time.perf_counter()
    with open(folder / "log", "w") as log:
        warm = subprocess.Popen([str(bin_ / "ppg"), "warm", "--socket", str(sock)], cwd=ws, env=hot, stdout=log,
                                stderr=subprocess.STDOUT)
    while not sock.exists() and warm.poll() is None:
        time.sleep(0.05)
    ready = time.perf_counter() - t
    times, outputs = {"cold": [], "warm": []}, {}
    try:
        for _ in range(a.rounds):
            for name, e in (("cold", env), ("warm", hot)):
                t = time.perf_counter()
                r = subprocess.run([str(bin_ / "dvc"), "repro", "-s", "-f", f"evaluate@{a.policy}"], cwd=ws, env=e,
                                   capture_output=True, text=True)
                times[name].append(time.perf_counter() - t)
                if r.returncode or "not started warm" in r.stderr:
                    sys.exit(f"{name}: exit {r.returncode}\n{r.stdout[-2000:]}{r.stderr[-2000:]}")
                outputs.setdefault(name, []).append({f.name: f.read_bytes() for f in sorted(out.iterdir())})
    finally:
        warm.terminate()
        warm.wait()
    served = (folder / "log").read_text().count(" exited 0 ")
    shutil.rmtree(folder)
    same = all(o == outputs["cold"][0] for runs in outputs.values() for o in runs)
    print(f"`dvc repro -s -f evaluate@{a.policy}` in {ws}; the warm process listened after {ready:.1f} s "
          f"(once per pipeline run) and ran {served} stage(s)\n")
    print("| path | seconds per stage (rounds) | outputs (" + ", ".join(outputs["cold"][0]) + ") |")
    print("|---|---|---|")
    for name, ts in times.items():
        print(f"| {name} | {', '.join(f'{t:.1f}' for t in ts)} | {'the same' if same else 'DIFFER'} |")
    mean = {k: sum(v) / len(v) for k, v in times.items()}
    print(f"\nratio cold / warm: {mean['cold'] / mean['warm']:.2f}x")


if __name__ == "__main__":
    main()
