"""The K study on the simulator: which credit horizon wins, as a function of the dependency
distance d, the amount of data and the weight shaping.

A cell = (d, training-set size n, seed, policy, weighting). Per (d, n, seed) the simulator logs n
behaviour dialogues and `ppg build` turns them into sequences once; every policy and weighting
then trains offline PPG on them and is evaluated on the same held-out personas. A cell is done
when OUT/cells/<cell>/metrics.json exists, so an interrupted study resumes where it stopped.
Nothing here knows which K should win.
"""

import copy
import json
import time
from dataclasses import replace
from pathlib import Path

from ppg.returns import parse_policy_id

SETTING = "study"


def cell_id(d, n, seed, policy, weights) -> str:
    return f"d{d}-n{n}-s{seed}-{policy}-{weights}"


def cells(cfg) -> list[dict]:
    """Every cell of the grid; k<K> with K >= turns is skipped (it is the full horizon)."""
    out = []
    for d in cfg.distances:
        for n in cfg.sizes:
            for seed in cfg.seeds:
                for policy in cfg.policies:
                    kind, k = parse_policy_id(policy)
                    if kind == "kstep" and k >= cfg.turns:
                        continue
                    for w in cfg.weights:
                        out.append({"id": cell_id(d, n, seed, policy, w), "d": d, "n": n, "seed": seed,
                                    "policy": policy, "weights": w})
    return out


def cell_params(p, c: dict, root: Path):
    """params.yaml with this cell's world, data, returns shaping, steps and output folders."""
    cfg = p.study
    setting = {"distance": [c["d"]], "known": cfg.known}
    data = root / "data" / f"d{c['d']}-n{c['n']}-s{c['seed']}"
    here = root / "cells" / c["id"]
    sim = replace(p.sim, domain=SETTING, domains={SETTING: setting}, dialogues=c["n"], turns=cfg.turns, seed=c["seed"])
    returns = replace(p.returns, policies=list(cfg.policies), segments={"from": "meta.segment_starts"},
                      **cfg.weights[c["weights"]])
    ds = copy.deepcopy(p.train.deepspeed)
    ds["optimizer"]["params"]["lr"] = cfg.lr
    ds["scheduler"] = {"type": "WarmupDecayLR", "params": {"warmup_min_lr": 0.0, "warmup_max_lr": cfg.lr,
                                                           "warmup_num_steps": max(1, cfg.steps // 20),
                                                           "warmup_type": "linear", "total_num_steps": "auto"}}
    train = replace(p.train, data=str(data / "built"), out=str(here / "models"), workdir=str(here / "work"),
                    max_steps=cfg.steps, seed=c["seed"], batch_size=cfg.batch_size, deepspeed=ds,
                    lora=replace(p.train.lora, enabled=False), checkpoint_every=max(cfg.steps, 1))
    # greedy decoding, all personas in one batch: the policy's mode, cheap and without sampling noise
    ev = replace(p.eval, out=str(here / "eval"), mode="online", domain=SETTING, personas=cfg.personas,
                 turns=cfg.turns, split="validation", seed=1000 + 10 * c["seed"], qa=False,
                 generation={"max_new_tokens": 24, "temperature": 0.0, "top_p": 1.0, "batch_size": cfg.personas})
    model = replace(p.model, spec=cfg.model, base="")
    return replace(p, model=model, sim=sim, returns=returns, train=train, eval=ev), data


def prepare_data(p, data: Path) -> None:
    """Simulate and build a (d, n, seed) dataset once (shared by its policies and weightings)."""
    if (data / "built" / "stats.json").exists():
        return
    from ppg.data.build import build_dataset
    from ppg.data.schema import write_dialogues
    from ppg.models import base_model
    from ppg.sim.simulate import simulate

    write_dialogues(data / "imported" / "dialogues.jsonl", simulate(SETTING, p.sim.dialogues, p.sim.turns,
                                                                    p.sim.seed, p.sim))
    build_dataset(data / "imported", data / "built", base_model(p), p.model.spec, p.returns.policies,
                  p.returns.segments, p.build)


def run_cell(p, c: dict, root: Path) -> dict:
    """Train and evaluate one cell, or read it back if it is done."""
    from ppg.evaluate import evaluate
    from ppg.train import train

    done = root / "cells" / c["id"] / "metrics.json"
    if done.exists():
        return {**json.loads(done.read_text()), "skipped": True}
    cp, data = cell_params(p, c, root)
    prepare_data(cp, data)
    t0 = time.perf_counter()
    train(cp, c["policy"], progress=False)
    m = evaluate(cp, c["policy"])
    from ppg.io import atomic_open

    result = {**c, "seconds": time.perf_counter() - t0, "mlflow_run_id": m.get("mlflow_run_id"),
              "online": {k: v for k, v in m["online"].items() if k != "drift"}, "drift": m["online"]["drift"]}
    with atomic_open(done) as f:
        json.dump(result, f, indent=1, default=str)
    return {**result, "skipped": False}


def summary(results: list[dict]) -> dict:
    """Mean over seeds (and its spread) of consistency, coverage and reward per (d, n, policy,
    weighting); and, per (d, n, weighting), the policy with the highest mean consistency."""
    import numpy as np

    from ppg.evaluate import mean_ci

    groups: dict[tuple, list[dict]] = {}
    for r in results:
        groups.setdefault((str(r["d"]), r["n"], r["policy"], r["weights"]), []).append(r)
    table = {}
    for key, rs in sorted(groups.items(), key=lambda kv: str(kv[0])):
        table["|".join(map(str, key))] = {
            m: mean_ci([r["online"][m]["mean"] for r in rs], (0.0, 1.0)) for m in ("consistency", "coverage", "reward")}
        table["|".join(map(str, key))]["seeds"] = len(rs)
    best = {}
    for key, row in table.items():
        d, n, policy, w = key.split("|")
        k = f"{d}|{n}|{w}"
        if k not in best or row["consistency"]["mean"] > table[best[k]]["consistency"]["mean"]:
            best[k] = key
    return {"cells": table, "best": {k: v.split("|")[2] for k, v in best.items()},
            "consistency_mean": float(np.mean([r["online"]["consistency"]["mean"] for r in results])) if results else None}
