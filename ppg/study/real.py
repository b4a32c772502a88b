"""The K study on real logged dialogues (Consistent-LLMs): offline PPG per policy and weight
shaping, scored by persona-grouped cross-validation.

Per domain the logged dialogues (optionally a seeded subsample) are built into sequences with
`folds` persona-grouped folds. A cell = (domain, fold, policy, weighting): offline PPG (LoRA on
the study's model) trains on every fold but F; each judged turn of fold F is then scored by
    score_t = log pi_theta(a_t | x_t) - log pi_ref(a_t | x_t)      (the likelihood ratio)
with pi_ref the untrained model (LoRA adapters off). Pooled over a domain's folds, every turn is
scored exactly once by a model that never saw its persona group:
- AUC: P(score of a consistent turn > score of a contradicting one) with a bootstrap interval over
  persona groups; refused (with the count) when the domain has too few contradicting turns.
- weighted NLL: mean of -w_t log pi_theta(a_t | x_t) with the policy's raw weights, and its change
  from the untrained model, mean of -w_t * score_t (< 0: the trained model puts more mass on the
  turns the policy credits). Intervals are Student-t over turns.
A cell is done when OUT/cells/<cell>/turns.jsonl exists and its config-key.txt holds the hash of
the config that would make it now (ppg.study.sim.study_cached), so a stopped study resumes and a
changed grid never reads a stale cell; a domain's built data and its reference cache are keyed by
its files' content and the build settings likewise.
"""

import json
import random
import time
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np

from ppg.study.sim import config_key, study_cached, with_lr


def real_cells(cfg) -> list[dict]:
    r = cfg.real
    return [{"id": f"{d}-f{f}-{pol}-{w}", "domain": d, "fold": f, "policy": pol, "weights": w}
            for d in r.domains for f in range(r.folds) for pol in r.policies
            for w in (["raw"] if pol == "bc" else r.weights)]  # bc's weights are all 1: a baseline would zero them


def domain_files(data: Path, domain: str) -> list[Path]:
    files = sorted(Path(data).glob(f"{domain}__*.json"))
    if not files:
        raise FileNotFoundError(f"{data}: no {domain}__*.json file (the dialogues/ folder of consistent-LLMs)")
    return files


def domain_key(p, data: Path, domain: str) -> str:
    """What a domain's built data and reference cache depend on: its files' content, the subsample,
    folds, windows, model and returns settings (not the policy list: a policy added later only
    adds a weight column)."""
    from ppg.io import content_hash

    r = p.study.real
    return config_key({"files": content_hash(*domain_files(data, domain)), "model": r.model,
                       "max_dialogues": r.max_dialogues, "folds": r.folds, "max_length": r.max_length,
                       "segments": p.returns.segments, "gamma": p.returns.gamma})


def prepare_domain(p, data: Path, domain: str, root: Path) -> Path:
    """Import a domain's files, subsample, build with persona-grouped folds (once); the built folder."""
    from ppg.data.build import build_dataset
    from ppg.data.importers import import_paths
    from ppg.data.schema import write_dialogues
    from ppg.models import resolve_model

    r = p.study.real
    built = root / "data" / domain / "built"
    if study_cached(root / "data" / domain, domain_key(p, data, domain), "built/stats.json"):
        if set(r.policies) <= set(json.loads((built / "stats.json").read_text())["policies"]):
            return built
        # a policy added later rebuilds: the same seeded subsample, folds and windows, one more weight column
    dialogues, _ = import_paths("consistent-llms", domain_files(data, domain))
    if r.max_dialogues and len(dialogues) > r.max_dialogues:
        dialogues = sorted(random.Random(f"real:{domain}").sample(dialogues, r.max_dialogues),
                           key=lambda d: d.dialogue_id)
    write_dialogues(root / "data" / domain / "dialogues.jsonl", dialogues)
    cfg = replace(p.build, splits={"train": 1.0}, folds=r.folds, max_length=r.max_length)
    build_dataset(root / "data" / domain, built, resolve_model(r.model), r.model, r.policies, p.returns.segments, cfg,
                  p.returns.gamma)
    return built


def scored_rows(rows: list[dict], max_turns: int, key: str) -> list[dict]:
    """The windows of a fold whose judged turns get scored: all of them (max_turns 0), else about
    max_turns judged turns: windows holding a contradicting turn first (until they give half of max_turns
    as contradicting turns, so the AUC's two classes stay balanced), then the others, each in a seeded
    order. The same windows for every cell of the fold, so cells compare on the same turns; the
    cost of scoring is per window, and a window's turns are taken whole."""
    if not max_turns:
        return rows
    # reward holds the whole dialogue's turns; a window scores only its targets (turn_index >= 0)
    own = [[r["reward"][t] for t in sorted({t for t in r["turn_index"] if t >= 0})] for r in rows]
    judged = [sum(1 for x in xs if x == x) for xs in own]
    bad = [sum(1 for x in xs if x == x and x < 0.5) for xs in own]
    order = list(range(len(rows)))
    random.Random(f"scored:{key}").shuffle(order)
    keep, n, n_bad = [], 0, 0
    for i in [i for i in order if bad[i]]:
        if n_bad >= (max_turns + 1) // 2 or n >= max_turns:
            break
        keep.append(i)
        n, n_bad = n + judged[i], n_bad + bad[i]
    for i in [i for i in order if not bad[i]]:
        if n >= max_turns:
            break
        keep.append(i)
        n += judged[i]
    return [rows[i] for i in sorted(keep)]


def cell_params(p, c: dict, root: Path):
    r = p.study.real
    here = root / "cells" / c["id"]
    returns = replace(p.returns, policies=[c["policy"]], **p.study.weights[c["weights"]])
    ds = with_lr(p.train.deepspeed, r.lr, warmup=max(1, r.steps // 10))
    train = replace(p.train, data=str(root / "data" / c["domain"] / "built"), split="train", out=str(here / "models"),
                    workdir=str(here / "work"), max_steps=r.steps, batch_size=r.batch_size,
                    subsample=0, deepspeed=ds, checkpoint_every=max(r.steps, 1),
                    lora=replace(p.train.lora, enabled=r.lora))
    return replace(p, model=replace(p.model, spec=r.model, base=""), returns=returns, train=train)


def run_real_cell(p, c: dict, root: Path, data: Path) -> dict:
    """Train one cell on every fold but its own, score the judged turns of its fold (or read back)."""
    import pyarrow.parquet as pq

    from ppg.evaluate.run import load_trained
    from ppg.evaluate.offline import offline_turns
    from ppg.io import atomic_open
    from ppg.train.offline import run_name, train

    here = root / "cells" / c["id"]
    cp = cell_params(p, c, root)
    key = config_key(cp, c, domain_key(p, data, c["domain"]), p.study.real.max_turns)
    if study_cached(here, key, "turns.jsonl"):
        return {**json.loads((here / "cell.json").read_text()), "skipped": True}
    built = prepare_domain(p, data, c["domain"], root)
    t0 = time.perf_counter()
    result = train(cp, c["policy"], fold=c["fold"], progress=False)
    t1 = time.perf_counter()
    model, ref, tok, lora = load_trained(cp, run_name(c["policy"], c["fold"]))
    rows = scored_rows([x for x in pq.read_table(built / "train.parquet").to_pylist() if x["fold"] == c["fold"]],
                       p.study.real.max_turns, f"{c['domain']}:{c['fold']}")
    cache_path = root / "data" / c["domain"] / f"reference-fold{c['fold']}.json"
    cache = json.loads(cache_path.read_text()) if cache_path.exists() else {}
    known = len(cache)
    turns = offline_turns(model, ref, lora, tok, rows, c["policy"], ref_cache=cache)
    if len(cache) > known:
        with atomic_open(cache_path) as f:
            json.dump(cache, f)
    t2 = time.perf_counter()  # the split tells where a cell's time goes (training vs scoring)
    cell = {**c, "seconds": t2 - t0, "train_seconds": t1 - t0, "score_seconds": t2 - t1,
            "device": str(next(model.parameters()).device), "steps": result["steps"], "tokens": result["tokens"],
            "mlflow_run_id": result.get("mlflow_run_id"), "turns": len(turns)}
    with atomic_open(here / "cell.json") as f:
        json.dump(cell, f, indent=1)
    with atomic_open(here / "turns.jsonl") as f:  # written last: its presence marks the cell done
        f.writelines(json.dumps(t) + "\n" for t in turns)
    return {**cell, "skipped": False}


def real_summary(p, root: Path, results: list[dict]) -> dict:
    """Pool each (domain, policy, weighting)'s folds: AUC (or refused, with the count), weighted
    NLL and its change from the untrained model, each with an interval."""
    from ppg.stats import mean_ci
    from ppg.evaluate.offline import offline_metrics

    groups: dict[tuple, list[dict]] = {}
    for c in results:
        turns = [json.loads(x) for x in (root / "cells" / c["id"] / "turns.jsonl").read_text().splitlines()]
        groups.setdefault((c["domain"], c["policy"], c["weights"]), []).append({"cell": c, "turns": turns})
    table = {}
    for (domain, policy, w), parts in sorted(groups.items()):
        turns = [t for part in parts for t in part["turns"]]
        m = offline_metrics(turns, p.eval.min_contradictions)
        delta = [-t["weight"] * t["score"] for t in turns if t["weight"] == t["weight"]]
        m["weighted_nll_change"] = mean_ci(delta)
        m["folds"] = sorted(part["cell"]["fold"] for part in parts)
        m["steps"] = parts[0]["cell"]["steps"]
        m["seconds"] = float(np.sum([part["cell"]["seconds"] for part in parts]))
        table[f"{domain}|{policy}|{w}"] = m
    return {"cells": table, "model": p.study.real.model, "steps": p.study.real.steps, "config": asdict(p.study.real),
            "seconds": float(np.sum([m["seconds"] for m in table.values()]))}
