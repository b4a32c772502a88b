"""The K study on the simulator: which credit horizon wins, as a function of the dependency
distance d, the amount of data and the weight shaping.

A cell = (d, training-set size n, seed, policy, weighting). Per (d, n, seed) the simulator logs n
behaviour dialogues and `ppg build` turns them into sequences once; every policy and weighting
then trains offline PPG on them and is evaluated on the same held-out personas. A cell is done
when OUT/cells/<cell>/metrics.json exists AND its folder's config-key.txt holds the hash of the
config that would produce it now (study_cached), so an interrupted study resumes where it
stopped and a changed grid never reads a stale cell. Nothing here knows which K should win.

Every cell starts from one STUDY BASE: the tiny model behaviour-cloned (`bc`) on a separate pool
of behaviour dialogues (all distances mixed, its own seed), built once in OUT/base/. It plays the
part SmolLM2 plays in the pipeline: a pretrained model that already speaks the simulator's
language and imitates the behaviour policy (pi_0). Without it a cell's few hundred steps go into
learning English templates from random weights and no cell learns the decision K is about.
"""

import copy
import json
import shutil
import time
from dataclasses import asdict, is_dataclass, replace
from pathlib import Path

from ppg.returns import parse_policy_id, shaping_zeroes_bc

SETTING = "study"


def config_key(*parts) -> str:
    """Hash of what produced a cached study result: Params trees and any other parts (a cell, a
    data file's content hash). A run's Params copy what it uses out of the study section into
    train, eval, sim and returns, so the sections no single run reads are left out (the study
    grid, registry, pipeline, and where MLflow logs): a grid change reruns the cells it changes."""
    from ppg.train.checkpoint import fingerprint

    def plain(x):
        if is_dataclass(x):
            d = asdict(x)
            for section in ("mlflow", "study", "registry", "pipeline"):
                d.pop(section, None)
            return d
        return x

    return fingerprint([plain(x) for x in parts])


def study_cached(folder: Path, key: str, done: str) -> bool:
    """True when folder/done was made by `key`. A folder made by another key (or by an older
    version that wrote none) is removed, never read, and stamped with `key` for the result about
    to be made; a folder of this key without `done` is one in progress (its checkpoints resume)."""
    stamp = folder / "config-key.txt"
    made_by = stamp.read_text().strip() if stamp.exists() else None
    if made_by == key:
        return (folder / done).exists()
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    stamp.write_text(key)
    return False


def cell_id(d, n, seed, policy, weights) -> str:
    return f"d{d}-n{n}-s{seed}-{policy}-{weights}"


def cells(cfg) -> list[dict]:
    """Every cell of the grid; k<K> with K >= turns is skipped (it is the full horizon). Per
    (d, seed) a `base` cell evaluates the study base itself: the line every policy starts from."""
    out = []
    for d in cfg.distances:
        for seed in cfg.seeds:
            out.append({"id": f"d{d}-s{seed}-base", "d": d, "n": 0, "seed": seed, "policy": "base", "weights": "-"})
        for n in cfg.sizes:
            for seed in cfg.seeds:
                for policy in cfg.policies:
                    kind, k = parse_policy_id(policy)
                    if k is not None and k >= cfg.turns:  # a horizon past the dialogue: that is full
                        continue
                    for w in cfg.weights:
                        if policy == "bc" and shaping_zeroes_bc(cfg.weights[w].get("baseline", "none"),
                                                                cfg.weights[w].get("standardize", False)):
                            continue
                        out.append({"id": cell_id(d, n, seed, policy, w), "d": d, "n": n, "seed": seed,
                                    "policy": policy, "weights": w})
    for d in cfg.online.distances:  # online PPG from the study base: rollouts, not logged data (n = 0)
        for seed in cfg.seeds if cfg.online.seeds is None else cfg.online.seeds:
            for policy in cfg.online.policies:
                out.append({"id": f"d{d}-online-s{seed}-{policy}", "d": d, "n": 0, "seed": seed, "policy": policy,
                            "weights": "online"})
    return out


def with_lr(deepspeed: dict, lr: float, warmup: int) -> dict:
    """A copy of the DeepSpeed config with peak lr, linear warm-up from 0, then linear decay to 0."""
    ds = copy.deepcopy(deepspeed)
    ds["optimizer"]["params"]["lr"] = lr
    ds["scheduler"] = {"type": "WarmupDecayLR", "params": {"warmup_min_lr": 0.0, "warmup_max_lr": lr,
                                                           "warmup_num_steps": warmup, "warmup_type": "linear",
                                                           "total_num_steps": "auto"}}
    return ds


BASE_SEED = 9999  # the base pool's simulator seed: no cell's data (seeds 0..) or evaluation (1000+)


def study_params(p, *, distances, data: Path, here: Path, model: str, policies, weights: dict, steps: int, lr: float,
            batch: int, dialogues: int, seed: int):
    """params.yaml for one training run of the study: its world, data, shaping, steps and folders."""
    cfg = p.study
    setting = {"distance": list(distances), "known": cfg.known, "probes": cfg.probes}
    evasive = p.sim.evasive_reward if cfg.evasive_reward is None else cfg.evasive_reward
    sim = replace(p.sim, domain=SETTING, domains={SETTING: setting}, dialogues=dialogues, turns=cfg.turns, seed=seed,
                  evasive_reward=evasive)
    returns = replace(p.returns, policies=list(policies), segments={"from": "meta.segment_starts"}, **weights)
    ds = with_lr(p.train.deepspeed, lr, warmup=max(1, steps // 20))
    train = replace(p.train, data=str(data / "built"), out=str(here / "models"), workdir=str(here / "work"),
                    max_steps=steps, seed=seed, batch_size=batch, deepspeed=ds,
                    lora=replace(p.train.lora, enabled=False), checkpoint_every=max(steps, 1))
    # sampling at study.temperature, all personas in one batch: offline PPG reweights the base's
    # distribution (pi ~ pi_0 * E[w | a]); greedy decoding would hide every shift that does not
    # move the argmax. Validation personas of the seed; no training data uses them.
    ev = replace(p.eval, out=str(here / "eval"), mode="online", domain=SETTING, personas=cfg.personas,
                 turns=cfg.turns, split="validation", seed=1000 + 10 * seed, qa=False, primary="online.reward",
                 llm_judge=False, generation={"max_new_tokens": 24, "temperature": cfg.temperature, "top_p": 1.0,
                                             "batch_size": cfg.personas})
    # the study gates nothing: registry metrics of the pipeline's config (maybe offline) do not apply
    registry = replace(p.registry, thresholds={}, non_inferiority={}, seed=None)
    return replace(p, model=replace(p.model, spec=model, base=""), sim=sim, returns=returns, train=train, eval=ev,
                   registry=registry)


def base_params(p, root: Path):
    """The study base: behaviour cloning of study.model on study.base_dialogues (every distance)."""
    cfg = p.study
    raw = {"baseline": "none", "standardize": False, "clip": None}
    return study_params(p, distances=cfg.distances, data=root / "base" / "data", here=root / "base", model=cfg.model,
                   policies=["bc"], weights=raw, steps=cfg.base_steps, lr=cfg.base_lr, batch=cfg.base_batch_size,
                   dialogues=cfg.base_dialogues, seed=BASE_SEED)


def prepare_base(p, root: Path) -> Path:
    """Train the study base once (OUT/base/models/bc/run.json marks it done, for this config); its
    model folder."""
    from ppg.train.offline import train

    bp = base_params(p, root)
    out = Path(bp.train.out) / "bc"
    if not study_cached(root / "base", config_key(bp), "models/bc/run.json"):
        prepare_data(bp, root / "base" / "data", ["bc"])
        train(bp, "bc", progress=False)
    return out


def base_key(p, root: Path) -> str:
    return config_key(base_params(p, root))


def cell_params(p, c: dict, root: Path):
    """params.yaml of one cell (starting from the study base) and its (d, n, seed) data folder."""
    cfg = p.study
    data = root / "data" / f"d{c['d']}-n{c['n']}-s{c['seed']}"
    cp = study_params(p, distances=[c["d"]], data=data, here=root / "cells" / c["id"],
                 model=str(Path(base_params(p, root).train.out) / "bc"), policies=[c["policy"]],
                 weights=cfg.weights[c["weights"]], steps=cfg.steps, lr=cfg.lr, batch=cfg.batch_size,
                 dialogues=c["n"], seed=c["seed"])
    return cp, data


def prepare_data(p, data: Path, policies: list[str]) -> None:
    """Simulate and build a (d, n, seed) dataset once, with the weight columns of `policies`
    (shared by every policy and weighting of the grid)."""
    key = config_key({"sim": asdict(p.sim), "build": asdict(p.build), "model": p.model.spec, "policies": policies,
                      "returns": {k: getattr(p.returns, k) for k in ("segments", "gamma")}})
    if study_cached(data, key, "built/stats.json"):
        return
    from ppg.data.build import build_dataset
    from ppg.data.schema import write_dialogues
    from ppg.models import base_model
    from ppg.sim.simulate import simulate

    write_dialogues(data / "imported" / "dialogues.jsonl", simulate(SETTING, p.sim.dialogues, p.sim.turns,
                                                                    p.sim.seed, p.sim))
    build_dataset(data / "imported", data / "built", base_model(p), p.model.spec, policies,
                  p.returns.segments, p.build, p.returns.gamma)


def decisions(dialogues) -> dict:
    """The choices K is about, read from evaluation rollouts (meta.sim holds the story):
    invented = asks of an OPEN fact answered with a value (the tempting reply); answered_known =
    asks of a stated fact answered (coverage where copying the backstory is the right reply);
    exposed = probes of an open fact scoring 0 (what inventing costs d turns later)."""
    n = {"open_asks": 0, "open_invented": 0, "known_asks": 0, "known_answered": 0, "open_probes": 0, "open_exposed": 0}
    for d in dialogues:
        known = set(d.meta["sim"]["persona"]["known"])
        for line in d.lines:
            j = line.judge
            if line.speaker != "persona" or not j or not j.get("asked"):
                continue
            if j["probe"]:
                if j["asked"] not in known:
                    n["open_probes"] += 1
                    n["open_exposed"] += line.reward == 0
            elif j["asked"] in known:
                n["known_asks"] += 1
                n["known_answered"] += bool(j["answered"])
            else:
                n["open_asks"] += 1
                n["open_invented"] += bool(j["answered"])
    rate = lambda a, b: n[a] / n[b] if n[b] else None  # noqa: E731
    return {"invented": rate("open_invented", "open_asks"), "answered_known": rate("known_answered", "known_asks"),
            "exposed": rate("open_exposed", "open_probes"), "counts": n}


def run_cell(p, c: dict, root: Path) -> dict:
    """Train and evaluate one cell (a base cell: evaluate the study base), or read it back if this
    config made it."""
    from ppg.data.schema import read_dialogues
    from ppg.evaluate.run import evaluate
    from ppg.io import atomic_open
    from ppg.train.offline import train

    base = Path(base_params(p, root).train.out) / "bc"

    def from_base(policies, steps, lr, weights=None):  # no logged data: the base evaluated or trained online
        return study_params(p, distances=[c["d"]], data=root / "base" / "data", here=root / "cells" / c["id"],
                       model=str(base), policies=policies, weights=weights or {}, steps=steps, lr=lr, batch=1,
                       dialogues=1, seed=c["seed"])

    if c["policy"] == "base":
        raw = {"baseline": "none", "standardize": False, "clip": None}
        cp, name = from_base(["bc"], steps=1, lr=p.study.lr, weights=raw), "base"
    elif c["weights"] == "online":
        o = p.study.online
        cp = from_base([c["policy"]], steps=o.steps, lr=o.lr)
        cp = replace(cp, online=replace(cp.online, domain=SETTING, personas_per_step=o.personas_per_step, group=o.group,
                                        turns=p.study.turns, steps=o.steps, kl_coef=o.kl_coef, init="",
                                        generation={"max_new_tokens": 24, "temperature": 1.0, "top_p": 1.0,
                                                    "batch_size": o.personas_per_step * o.group}))
        name = f"{c['policy']}-online"
    else:
        cp, data = cell_params(p, c, root)
        name = c["policy"]
    here = root / "cells" / c["id"]
    if study_cached(here, config_key(cp, c, base_key(p, root)), "metrics.json"):
        return {**json.loads((here / "metrics.json").read_text()), "skipped": True}
    prepare_base(p, root)
    t0 = time.perf_counter()
    if c["policy"] == "base":
        shutil.copytree(base, Path(cp.train.out) / "base", dirs_exist_ok=True)
        m = evaluate(cp, "bc", run="base", log=False)  # its metrics would overwrite each other in the base's run
    elif c["weights"] == "online":
        from ppg.train.online import train_online

        train_online(cp, c["policy"], progress=False)
        m = evaluate(cp, c["policy"], run=name)
    else:
        prepare_data(cp, data, list(p.study.policies))
        train(cp, c["policy"], progress=False)
        m = evaluate(cp, c["policy"])
    rollouts = read_dialogues(Path(cp.eval.out) / name / "dialogues.jsonl")
    result = {**c, "seconds": time.perf_counter() - t0,
              "mlflow_run_id": m.get("mlflow_run_id") if name != "base" else None,
              "online": {k: v for k, v in m["online"].items() if k != "drift"}, "drift": m["online"]["drift"],
              "decisions": decisions(rollouts)}
    with atomic_open(here / "metrics.json") as f:
        json.dump(result, f, indent=1, default=str)
    return {**result, "skipped": False}


METRICS = ("reward", "consistency", "coverage")


def world(p) -> dict:
    """The study world's parameters and, per d, the horizon its expected returns predict: the
    smallest K whose K-step credit prefers the dodge at an open ask (ppg.sim.expected), written
    into the summary before the report reads any result."""
    from ppg.sim.expected import smallest_k_for_dodge

    cfg = p.study
    evasive = p.sim.evasive_reward if cfg.evasive_reward is None else cfg.evasive_reward
    return {"turns": cfg.turns, "probes": cfg.probes, "evasive_reward": evasive, "behaviour": dict(p.sim.behaviour),
            "predicted_k": {str(d): smallest_k_for_dodge(d, cfg.probes, evasive, p.sim.behaviour)
                            for d in cfg.distances if isinstance(d, int)}}
DECISIONS = ("invented", "answered_known", "exposed")


def summary(results: list[dict]) -> dict:
    """Mean over seeds with a Student-t interval of the reward (the study's metric: persona and
    commitment verdicts hold and the asked question is answered), consistency and coverage, the
    decision rates and the drift curve, per (d, n, policy, weighting); and, per (d, n, weighting),
    the policy with the highest mean reward."""
    import numpy as np

    from ppg.stats import mean_ci

    groups: dict[tuple, list[dict]] = {}
    for r in results:
        groups.setdefault((str(r["d"]), r["n"], r["policy"], r["weights"]), []).append(r)
    table = {}
    for key, rs in sorted(groups.items(), key=lambda kv: str(kv[0])):
        row = {m: mean_ci([r["online"][m]["mean"] for r in rs], (0.0, 1.0)) for m in METRICS}
        # per seed too: every policy of a (d, n, seed) met the same data and held-out personas,
        # so the settling test pairs policies by seed (ppg.study.settle)
        row["reward"] = mean_ci([r["online"]["reward"]["mean"] for r in rs], (0.0, 1.0),
                                units=[str(r["seed"]) for r in rs])
        for m in DECISIONS:
            xs = [r["decisions"][m] for r in rs if r.get("decisions", {}).get(m) is not None]
            row[m] = mean_ci(xs, (0.0, 1.0)) if xs else None
        turns = len(rs[0]["drift"])
        row["drift"] = [float(np.mean([r["drift"][t]["mean"] for r in rs])) for t in range(turns)]
        row["seeds"] = len(rs)
        table["|".join(map(str, key))] = row
    best = {}
    for key, row in table.items():
        d, n, policy, w = key.split("|")
        if policy == "base" or w == "online":
            continue
        k = f"{d}|{n}|{w}"
        if k not in best or row["reward"]["mean"] > table[best[k]]["reward"]["mean"]:
            best[k] = key
    trained = [r for r in results if r["policy"] != "base"]
    return {"cells": table, "best": {k: v.split("|")[2] for k, v in best.items()},
            "reward_mean": float(np.mean([r["online"]["reward"]["mean"] for r in trained])) if trained else None}
