"""The K demo (`make demo`, params.kdemo.yaml): the pipeline itself, in a workspace of its own,
on the world of the settled K study (docs/results.md), showing that the credit horizon decides
what the policy learns.

The world: a fact the backstory leaves open is asked, and probed twice, d = 1 and 2 turns later;
inventing a value earns 1 at the ask and loses at a probe that exposes it, a dodge earns 0.2. So
greedy credit (K = 1 <= d) sees only the ask and learns to invent; K = d + 2 = 3 and full credit
see both probes and learn to dodge. The decision rate `online.invented` shows it; the held-out
reward barely moves (the study measured +0.018 to +0.028 over 9 seeds).

Its base model is the study's: the tiny model behaviour-cloned on 2,000 dialogues of the same
world (ppg.study.sim.prepare_base), so that 100 steps of PPG move a decision rather than teach
the simulator's language. It is the model spec `sim-base`, which `ppg prepare-model` builds once
into the model cache under a key of its recipe and of the code that trains it (about 3
minutes on 2 cores).
"""

import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

# The settled study's world (params.kstudy.yaml's study section; a test holds them equal): every
# distance mixed in the base's pool, two probes, a dodge worth 0.2, 10 persona turns.
BASE_WORLD = {"distances": [1, 2, 3], "probes": 2, "evasive_reward": 0.2, "turns": 10}
WORKSPACE_FILES = ("dvc.yaml", "params.yaml", "params.kdemo.yaml", ".dvcignore", ".gitignore", "ppg")


def world_params():
    """The default Params with the settled study's world."""
    from ppg.config import Params

    p = Params()
    return replace(p, study=replace(p.study, **BASE_WORLD))


def base_params():
    """Params of the study base (relative folders: the key must not depend on where it is built)."""
    from ppg.study.sim import base_params as study_base_params

    return study_base_params(world_params(), Path("."))


def sim_base_key() -> str:
    """The base's recipe (BASE_WORLD and the study's base settings) and the source of every module
    that builds it (ppg.study.sim's closure: simulator, data build, trainer); not this file's
    other functions, whose edits do not change the base."""
    from ppg.io import content_hash
    from ppg.lineage.closure import files, module_closure
    from ppg.study.sim import config_key

    code = content_hash(*(ROOT / f for f in files(module_closure({"ppg.study.sim"}))))
    return config_key(base_params(), code)[:16]


def sim_base() -> Path:
    """The study base's folder in the model cache, built on first use (about 3 min on 2 cores)."""
    from ppg.models import built_once, cache_dir

    return built_once(cache_dir() / "models" / f"sim-base-{sim_base_key()}", "config.json", build_sim_base)


def build_sim_base(target: Path) -> Path:
    """Train the study base (resumable in the cache's work folder) and copy it to target."""
    from ppg.config import MlflowConfig
    from ppg.models import atomic_folder, cache_dir
    from ppg.study.sim import prepare_base

    work = cache_dir() / "work" / target.name
    p = world_params()
    # its training run is logged beside it, not into whichever workspace asked for the model
    p = replace(p, mlflow=MlflowConfig(tracking_uri=f"sqlite:///{work}/mlflow.db", artifacts=str(work / "mlruns"),
                                       experiment="sim-base"))
    work.mkdir(parents=True, exist_ok=True)
    model = prepare_base(p, work)
    return atomic_folder(target, lambda tmp: shutil.copytree(model, tmp, dirs_exist_ok=True))


def make_workspace(ws: Path) -> str:
    """The demo's git + DVC workspace at ws (its own dvc.lock, MLflow store, models and data, never
    the user's), synced at every call with this checkout's code and config, params.kdemo.yaml
    merged into its params.yaml, and committed: its stages then depend on the code that runs
    them, as in any workspace. Returns made | updated | current."""
    from ppg.overlay import apply_overlay

    new = not (ws / ".dvc").is_dir()
    ws.mkdir(parents=True, exist_ok=True)
    for rel in WORKSPACE_FILES:
        src, dst = ROOT / rel, ws / rel
        if src.is_dir():
            shutil.rmtree(dst, ignore_errors=True)
            shutil.copytree(src, dst, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(src, dst)
    # params.yaml as committed, not as a `ppg run --params` overlay left it in the checkout
    # (params.tiny.yaml's optimizer, params.real.yaml's partner would change the demo's recipe)
    committed = subprocess.run(["git", "show", "HEAD:params.yaml"], cwd=ROOT, capture_output=True, text=True)
    if committed.returncode == 0:
        (ws / "params.yaml").write_text(committed.stdout)
    apply_overlay(ws / "params.yaml", ws / "params.kdemo.yaml")

    def git(*args):
        return subprocess.run(["git", *args], cwd=ws, check=True, capture_output=True, text=True)

    if new:
        git("init", "-q")
        git("config", "user.name", "ppg demo")
        git("config", "user.email", "demo@ppg.invalid")
        subprocess.run([str(Path(sys.executable).parent / "dvc"), "init", "-q"], cwd=ws, check=True)  # this env's
        shutil.copy(ROOT / ".dvc" / "config", ws / ".dvc" / "config")  # the local remote beside the workspace
    git("add", "-A", "--", *WORKSPACE_FILES, ".dvc")
    if subprocess.run(["git", "diff", "--cached", "--quiet"], cwd=ws).returncode == 0:
        return "current"
    git("commit", "-qm", "the K demo's workspace: this checkout's code and config, params.kdemo.yaml merged in")
    return "made" if new else "updated"


def decision_summary(p, folder: Path) -> str:
    """The demo's headline from its evaluations: each policy's decision rate and reward, and
    greedy's paired differences against the longer horizons on the same personas."""
    import json

    from ppg.evaluate.report import BASE, cell
    from ppg.gate import describe, paired_difference
    from ppg.metrics import metric_entry

    names = [*p.returns.policies, BASE]
    m = {pol: json.loads((folder / pol / "metrics.json").read_text()) for pol in names
         if (folder / pol / "metrics.json").exists()}

    lines = ["| model | online.invented (open asks answered with a guess) | online.reward |", "|---|---|---|"]
    lines += [f"| {pol} | {cell(metric_entry(x, 'online.invented'))} | {cell(metric_entry(x, 'online.reward'))} |"
              for pol, x in m.items()]
    lines.append("")
    longer = [pol for pol in m if pol not in ("greedy", "bc", BASE)] if "greedy" in m else []
    for other in longer:
        for name in ("online.invented", "online.reward"):
            d = paired_difference(name, m[other], m["greedy"], None, None, p.registry)
            lines.append(f"- {other} against greedy: {describe(name, d, p.registry)}")
    return "\n".join(lines) + "\n"
