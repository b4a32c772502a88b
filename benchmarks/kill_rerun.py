"""Kill the tiny pipeline at random moments, rerun it each time, and count the MLflow runs left
RUNNING (they must be 0: the next run's reaper ends a killed process's runs as KILLED) and the
reruns that did not finish. A check anyone can run; it takes ~10 minutes on 2 cores.

    .venv/bin/python benchmarks/kill_rerun.py [--kills 3] [--seed 0] [--keep DIR]

Each round gives the workspace new data (sim.seed = the round), so every round has a whole run to
do, starts `ppg run --params round.yaml` (the tiny overlay plus that seed) in a fresh process
group, sends SIGKILL to the whole group after a delay drawn from [5, 100) s (seeded), and moves
on; a last round goes to the end. Printed: the kill times, each round's exit, the runs by
status, and the verdict.
"""

import argparse
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def workspace(where: Path, env: dict) -> Path:
    ws = where / "ws"
    for rel in ("dvc.yaml", "params.yaml", "params.tiny.yaml", "ppg", "data/incoming/README.md"):
        src, dst = ROOT / rel, ws / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        (shutil.copytree if src.is_dir() else shutil.copy)(src, dst)
    for cmd in (["git", "init", "-q"], ["dvc", "init", "-q"]):
        subprocess.run(cmd, cwd=ws, env=env, check=True)
    shutil.copy(ROOT / ".dvc/config", ws / ".dvc/config")
    return ws


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--kills", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--keep", type=Path, default=None, help="Work here (kept) instead of a temp folder.")
    a = ap.parse_args()
    where = a.keep or Path(tempfile.mkdtemp(prefix="ppg-kill-"))
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "PPG_PARENT_RUN_ID")}
    env.update(PATH=f"{BIN}{os.pathsep}{env['PATH']}", DS_ACCELERATOR="cpu", HF_HUB_OFFLINE="1",
               PREFECT_HOME=str(where / "prefect"), DVC_SITE_CACHE_DIR=str(where / "dvc-site"),
               GIT_AUTHOR_NAME="k", GIT_AUTHOR_EMAIL="k@k", GIT_COMMITTER_NAME="k", GIT_COMMITTER_EMAIL="k@k")
    ws = workspace(where, env)
    rng = random.Random(a.seed)
    import yaml

    cmd = [str(BIN / "ppg"), "run", "--params", "round.yaml"]
    for i in range(a.kills + 1):
        overlay = yaml.safe_load((ROOT / "params.tiny.yaml").read_text())
        overlay["sim"]["seed"] = i
        (ws / "round.yaml").write_text(yaml.safe_dump(overlay))
        proc = subprocess.Popen(cmd, cwd=ws, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                start_new_session=True)
        delay = rng.uniform(5, 100) if i < a.kills else None
        try:
            rc = proc.wait(timeout=delay)
            print(f"round {i}: finished (exit {rc})" + (f" before its kill at {delay:.1f} s" if delay else ""))
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            print(f"round {i}: SIGKILL to the process group at {delay:.1f} s")
        time.sleep(1)
    from mlflow import MlflowClient

    c = MlflowClient(f"sqlite:///{ws}/mlflow/mlflow.db")
    runs = c.search_runs([c.get_experiment_by_name("ppg").experiment_id], max_results=1000)
    by = {}
    for r in runs:
        by.setdefault(r.info.status, []).append(r.info.run_name)
    for status, names in sorted(by.items()):
        print(f"{status}: {len(names)} ({', '.join(sorted(names))})")
    running = len(by.get("RUNNING", []))
    print(f"verdict: {running} run(s) left RUNNING, last run exit {rc}; workspace {ws}")
    sys.exit(1 if running or rc else 0)


if __name__ == "__main__":
    main()
