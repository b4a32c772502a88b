"""Evaluation: how consistent a trained persona model is.

online   on held-out simulator personas (a seed no training set uses): play dialogues, judge
         every turn exactly; prompt-to-line (persona), line-to-line (commitment), both
         (consistency), reward, fact coverage, Q&A on the backstory after the dialogue, and the
         per-turn consistency curve (drift), each with a 95% interval over dialogues.
offline  on logged data with verdicts (e.g. Consistent-LLMs): the likelihood-ratio score
         log pi_theta(a_t|x_t) - log pi_ref(a_t|x_t) per turn should rank consistent turns above
         contradicting ones (AUC, bootstrap CI over persona groups), plus the held-out weighted
         NLL (the offline PPG objective). Too few contradicting turns -> "refused", not scored.
"""

import math
import random

import numpy as np
import torch

from ppg.judges import SimJudge
from ppg.sim.simulate import SPEAKER
from ppg.sim.world import ASK, mentions

Z95 = 1.959964


def wilson(k: float, n: int) -> tuple[float, float]:
    """95% Wilson interval of a proportion k/n (well-behaved at 0 and 1 and for small n)."""
    if n == 0:
        return (float("nan"), float("nan"))
    p = k / n
    d = 1 + Z95 ** 2 / n
    c = (p + Z95 ** 2 / (2 * n)) / d
    h = Z95 * math.sqrt(p * (1 - p) / n + Z95 ** 2 / (4 * n * n)) / d
    return (c - h, c + h)


def mean_ci(x, bounds: tuple[float, float] | None = None, units: list[str] | None = None) -> dict:
    """Mean with a Student-t 95% interval over independent units (dialogues): a few held-out
    personas are the common case, where the normal quantile is too narrow. Rates pass
    bounds=(0, 1) so the interval stays inside what the metric can take. units (one id per value)
    keeps the values by unit under "per_unit", so the promotion gate can pair two models."""
    from scipy.stats import t as student_t

    x = np.asarray(x, dtype=float)
    extra = {"per_unit": dict(zip(units, map(float, x)))} if units is not None else {}
    if len(x) == 0:
        return {"mean": float("nan"), "lo": float("nan"), "hi": float("nan"), "n": 0, **extra}
    m = float(x.mean())
    h = student_t.ppf(0.975, len(x) - 1) * x.std(ddof=1) / math.sqrt(len(x)) if len(x) > 1 else float("nan")
    lo, hi = m - h, m + h
    if bounds is not None and h == h:
        lo, hi = max(lo, bounds[0]), min(hi, bounds[1])
    return {"mean": m, "lo": float(lo), "hi": float(hi), "n": int(len(x)), **extra}


def online_metrics(dialogues, judge: SimJudge, qa: list[list[bool]] | None = None) -> dict:
    """Per-dialogue rates, averaged over dialogues with CIs, and the drift curve."""
    per = {"consistency": [], "persona": [], "commitment": [], "reward": [], "coverage": []}
    by_turn: dict[int, list[int]] = {}
    for d in dialogues:
        v = judge.verdicts(d, SPEAKER, d.meta["sim"]["persona"])
        s = SimJudge.summary(v)
        for k in per:
            per[k].append(s[k])
        for t, x in enumerate(v):
            by_turn.setdefault(t, []).append(int(x.persona and x.commitment))
    ids = [d.dialogue_id for d in dialogues]
    out = {k: mean_ci(vals, (0.0, 1.0), ids) for k, vals in per.items()}
    out["drift"] = [{"turn": t, "mean": sum(x) / len(x), "lo": wilson(sum(x), len(x))[0],
                     "hi": wilson(sum(x), len(x))[1], "n": len(x)} for t, x in sorted(by_turn.items())]
    if qa is not None:
        out["qa"] = mean_ci([sum(q) / len(q) for q in qa if q], (0.0, 1.0), [i for i, q in zip(ids, qa) if q])
    out["dialogues"] = len(dialogues)
    return out


@torch.no_grad()
def backstory_qa(model, tok, dialogues, gen) -> list[list[bool]]:
    """After each dialogue, ask every fact its backstory states; correct = the answer states it."""
    from ppg.rollout import GenerationConfig

    gen = GenerationConfig(max_new_tokens=gen.max_new_tokens, temperature=0.0, batch_size=gen.batch_size)
    device = next(model.parameters()).device
    items = []
    for i, d in enumerate(dialogues):
        p = d.meta["sim"]["persona"]
        history = [{"role": "system", "content": d.personas[SPEAKER]}] + [
            {"role": "assistant" if ln.speaker == SPEAKER else "user", "content": ln.text} for ln in d.lines]
        items += [(i, a, p["facts"][a], history + [{"role": "user", "content": ASK[a]}]) for a in p["known"]]
    results = [[] for _ in dialogues]
    for s in range(0, len(items), gen.batch_size):
        chunk = items[s:s + gen.batch_size]
        prompts = [tok.apply_chat_template(m, add_generation_prompt=True, tokenize=False) for *_, m in chunk]
        enc = tok(prompts, return_tensors="pt", padding=True, padding_side="left", add_special_tokens=False).to(device)
        out = model.generate(**enc, max_new_tokens=gen.max_new_tokens, do_sample=False, pad_token_id=tok.pad_token_id)
        for j, (i, a, truth, _) in enumerate(chunk):
            answer = tok.decode(out[j, enc["input_ids"].shape[1]:], skip_special_tokens=True)
            results[i].append((a, truth) in mentions(answer))
    return results


def auc(scores, labels) -> float:
    """P(score of a consistent turn > score of a contradicting one), ties count half (the
    Mann-Whitney U statistic over average ranks)."""
    from scipy.stats import rankdata

    s, y = np.asarray(scores, float), np.asarray(labels, bool)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = rankdata(s)
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def offline_metrics(turns: list[dict], min_contradictions: int, seed: int = 0, boots: int = 200) -> dict:
    """turns: {group, reward (0/1/NaN), score (LR), nll_term (-w log pi or NaN)} per judged turn."""
    known = [t for t in turns if t["reward"] == t["reward"]]
    n_bad = sum(t["reward"] < 0.5 for t in known)
    out = {"turns": len(known), "contradictions": n_bad}
    w = [t["nll_term"] for t in turns if t["nll_term"] == t["nll_term"]]
    out["weighted_nll"] = mean_ci(w)
    if n_bad < min_contradictions or n_bad == len(known):
        out["auc"] = {"refused": True, "reason": f"refused (n = {n_bad} contradicting turns, need {min_contradictions})"}
        return out
    a = auc([t["score"] for t in known], [t["reward"] >= 0.5 for t in known])
    groups = sorted({t["group"] for t in known})
    by = {g: [t for t in known if t["group"] == g] for g in groups}
    rng = random.Random(seed)
    reps = []
    for _ in range(boots):  # resample persona groups: turns of one persona are not independent
        sample = [t for g in (rng.choice(groups) for _ in groups) for t in by[g]]
        x = auc([t["score"] for t in sample], [t["reward"] >= 0.5 for t in sample])
        if x == x:
            reps.append(x)
    lo, hi = (np.percentile(reps, [2.5, 97.5]).tolist() if reps else [float("nan")] * 2)
    out["auc"] = {"mean": a, "lo": lo, "hi": hi, "n": len(known), "groups": len(groups)}
    return out


def load_trained(p, name: str):
    """(model, reference, tokenizer, lora) for a `ppg train` output; the reference is the base
    model (for LoRA: the same model with its adapters switched off)."""
    from pathlib import Path

    from transformers import AutoModelForCausalLM

    from ppg.models import base_model, eval_device, load_tokenizer

    trained = Path(p.train.out) / name
    dev = eval_device()  # a GPU run scores on the GPU too, not on the host's cores
    if not (trained / "run.json").exists():
        raise FileNotFoundError(f"{trained}: no trained model (run `ppg train --policy {name.split('-fold')[0]}`)")
    tok = load_tokenizer(trained)
    if (trained / "adapter_config.json").exists():
        from peft import AutoPeftModelForCausalLM

        model = AutoPeftModelForCausalLM.from_pretrained(str(trained)).to(dev).eval()
        return model, None, tok, True
    model = AutoModelForCausalLM.from_pretrained(str(trained)).to(dev).eval()
    ref = AutoModelForCausalLM.from_pretrained(str(base_model(p))).to(dev).eval()
    return model, ref, tok, False


@torch.no_grad()
def offline_turns(model, ref, lora: bool, tok, rows, policy: str, ref_cache: dict | None = None) -> list[dict]:
    """Per judged turn of each row: LR score, reward, raw weight, weighted NLL term, persona group.
    ref_cache (row "sequence_id:window" -> the reference's per-turn log-probs) is read where it
    has the row and filled where not: the reference is the same model for every trained policy."""
    from contextlib import nullcontext

    from ppg.batching import Example, collate
    from ppg.losses import token_logprobs, turn_logprobs

    out, dev = [], next(model.parameters()).device
    for r in rows:
        b = collate([Example(np.asarray(r["input_ids"]), np.asarray(r["turn_index"]), np.asarray(r[f"w_{policy}"]))],
                    tok.pad_token_id)
        b = {k: v.to(dev) if torch.is_tensor(v) else v for k, v in b.items()}
        lp = token_logprobs(model(input_ids=b["input_ids"]).logits, b["input_ids"])
        n = r["n_turns"]
        ell, present = turn_logprobs(lp, b["turn_index"], n)
        key = f"{r['sequence_id']}:{r['window']}" if ref_cache is not None else None  # strict: two rows must never share a key
        if key in (ref_cache or {}):
            ell_ref = torch.tensor([ref_cache[key]], dtype=ell.dtype, device=dev)
        else:
            with (model.disable_adapter() if lora else nullcontext()):
                ref_lp = token_logprobs((model if lora else ref)(input_ids=b["input_ids"]).logits, b["input_ids"])
            ell_ref, _ = turn_logprobs(ref_lp, b["turn_index"], n)
            if ref_cache is not None:
                ref_cache[key] = ell_ref[0].tolist()
        for t in range(n):
            if present[0, t]:
                w = float(r[f"w_{policy}"][t])
                out.append({"key": f"{r['sequence_id']}:{r['window']}:{t}", "group": r["persona_group"],
                            "reward": float(r["reward"][t]), "weight": w,
                            "score": float(ell[0, t] - ell_ref[0, t]),
                            "nll_term": -w * float(ell[0, t]) if w == w else float("nan")})
    return out


def plot_drift(metrics: dict, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    for label, m in metrics.items():
        drift = m.get("online", {}).get("drift", [])
        if drift:
            t = [x["turn"] for x in drift]
            ax.plot(t, [x["mean"] for x in drift], marker="o", label=label)
            ax.fill_between(t, [x["lo"] for x in drift], [x["hi"] for x in drift], alpha=0.2)
    ax.set(xlabel="turn of the persona speaker", ylabel="consistent turns (share)", ylim=(0, 1.02),
           title="Consistency by turn (95% Wilson intervals)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def table(metrics: dict) -> str:
    def cell(x):
        if not isinstance(x, dict):
            return "-"
        if x.get("refused"):
            return x["reason"]
        return f"{x['mean']:.3f} [{x['lo']:.3f}, {x['hi']:.3f}]"

    cols = [("online", "reward"), ("online", "consistency"), ("online", "persona"), ("online", "commitment"),
            ("online", "coverage"),
            ("online", "qa"), ("offline", "auc"), ("offline", "weighted_nll")]
    head = "| policy | " + " | ".join(f"{a}.{b}" for a, b in cols) + " |"
    rows = [f"| {name} | " + " | ".join(cell(m.get(a, {}).get(b)) for a, b in cols) + " |" for name, m in metrics.items()]
    return "\n".join([head, "|" + "---|" * (len(cols) + 1)] + rows) + "\n"


def measure(p, model, tok, split: str, policy: str, ref=None, lora: bool = False, fold: int | None = None,
            seed: int | None = None):
    """Metrics of a loaded model on a split, as p.eval says: (metrics, judged dialogues or None,
    scored logged turns or None). The evaluate stage and the promotion gate both measure through
    here; seed overrides the split's persona seed (the gate draws fresh test personas)."""
    from pathlib import Path

    import pyarrow.parquet as pq

    from ppg.rollout import GenerationConfig, play, scenes

    cfg, metrics, dialogues, turns = p.eval, {"split": split}, None, None
    if cfg.mode in ("online", "both"):
        domain = cfg.domain or p.sim.domain
        gen = GenerationConfig(**cfg.generation)
        judge = SimJudge(p.sim.evasive_reward, p.sim.require)
        seed = cfg.persona_seed(split) if seed is None else seed
        eps = scenes(domain, cfg.personas, 1, cfg.turns or p.sim.turns, seed, p.sim.domains[domain])
        dialogues = play(model, tok, eps, domain, gen, seed, judge)
        qa = backstory_qa(model, tok, dialogues, gen) if cfg.qa else None
        metrics["online"] = {"domain": domain, "seed": seed, **online_metrics(dialogues, judge, qa)}
        if cfg.llm_judge:
            metrics["online"]["llm"] = llm_metrics(dialogues, cfg.llm_judge)
    if cfg.mode in ("offline", "both"):
        path = Path(p.train.data) / (f"{p.train.split}.parquet" if fold is not None else f"{split}.parquet")
        table_ = pq.read_table(path)
        rows = table_.to_pylist()
        rows = [r for r in rows if r["fold"] == fold] if fold is not None else rows
        turns = offline_turns(model, ref, lora, tok, rows, policy)
        metrics["offline"] = {"data": str(path), "fold": fold,
                              "domain": rows[0]["domain"] if rows and "domain" in table_.column_names else None,
                              **offline_metrics(turns, cfg.min_contradictions)}
    return metrics, dialogues, turns


def llm_metrics(dialogues, judge_cfg: dict) -> dict:
    """The rollouts judged again by an LLM judge: per-dialogue share of consistent turns among
    those with a verdict (prompt-to-line and line-to-line, as LLMJudgeConfig.require says), and
    the per-dialogue share of turns left without one (never counted as 0 or 1). Raises
    JudgeError when the endpoint stays down."""
    from ppg.llm_judge import LLMJudge, LLMJudgeConfig

    lj = LLMJudge(LLMJudgeConfig(**judge_cfg))
    judged = lj.judge(dialogues)
    rewards = [[ln.reward for ln in d.turns(SPEAKER)] for d in judged]
    known = [[r for r in rs if r is not None] for rs in rewards]
    ids = [d.dialogue_id for d, k in zip(judged, known) if k]
    shares = [(len(rs) - len(k)) / max(len(rs), 1) for rs, k in zip(rewards, known)]
    return {"consistency": mean_ci([sum(k) / len(k) for k in known if k], (0.0, 1.0), ids),
            "unknown_share": mean_ci(shares, (0.0, 1.0), [d.dialogue_id for d in judged]), "counts": dict(lj.counts)}


def metric_entry(metrics: dict | None, path: str):
    """What a dotted path (e.g. online.consistency) names in metrics.json: its {mean, lo, hi, n,
    per_unit} dict, a refusal {refused, reason}, a number, or None when it is absent."""
    x = metrics
    for part in path.split("."):
        if not isinstance(x, dict) or part not in x:
            return None
        x = x[part]
    return x


def metric(metrics: dict, path: str) -> float | None:
    """A dotted path into metrics.json (e.g. online.consistency -> its mean); None if absent,
    refused or not a finite number (a NaN mean of no units is unknown, never a score)."""
    x = metric_entry(metrics, path)
    if isinstance(x, dict):
        x = None if x.get("refused") else x.get("mean")
    return float(x) if isinstance(x, (int, float)) and math.isfinite(x) else None


def flat_metrics(metrics: dict, prefix: str = "") -> dict:
    """Scalar metrics for MLflow: every {mean, lo, hi} as name, name.lo, name.hi."""
    out = {}
    for key, v in metrics.items():
        name = f"{prefix}{key}"
        if isinstance(v, dict) and "mean" in v:
            out.update({name: v["mean"], f"{name}.lo": v.get("lo"), f"{name}.hi": v.get("hi")})
        elif isinstance(v, dict):
            out.update(flat_metrics(v, f"{name}."))
        elif isinstance(v, (int, float)) and not isinstance(v, bool):
            out[name] = v
    return out


def log_evaluation(p, run_id: str, metrics: dict, folder) -> None:
    """Evaluation metrics (prefixed by split), the drift curve by turn and the files of folder
    into the training run (the policy's child run)."""
    from ppg import tracking

    c = tracking.client(p.mlflow)
    split = metrics.get("split", "validation")
    scalars = flat_metrics({k: v for k, v in metrics.items() if k in ("online", "offline")}, f"{split}.")
    tracking.log_metrics(c, run_id, {k: v for k, v in scalars.items() if ".drift." not in k}, 0)
    for x in metrics.get("online", {}).get("drift", []):
        tracking.log_metrics(c, run_id, {f"{split}.drift": x["mean"]}, x["turn"])
    c.log_artifacts(run_id, str(folder), f"eval-{split}")


def evaluate(p, policy: str, fold: int | None = None, run: str | None = None, log: bool = True) -> dict:
    """Evaluate models/<policy>[-fold<F>] (or models/<run>, e.g. k3-online) on eval.split as p.eval
    says; write eval/<name>/ files and log them into the model's MLflow run. policy picks the
    weights of the offline weighted NLL."""
    import json
    from pathlib import Path

    from ppg.data.schema import write_dialogues
    from ppg.io import atomic_open
    from ppg.train import run_name

    cfg = p.eval
    name = run or run_name(policy, fold)
    model, ref, tok, lora = load_trained(p, name)
    trained = json.loads((Path(p.train.out) / name / "run.json").read_text())
    m, dialogues, _ = measure(p, model, tok, cfg.split, policy, ref, lora, fold)
    metrics = {"policy": policy, "fold": fold, "model": p.model.spec, "mlflow_run_id": trained.get("mlflow_run_id"),
               "primary": cfg.primary, **m}
    out = Path(cfg.out) / name
    if dialogues is not None:
        write_dialogues(out / "dialogues.jsonl", dialogues)
    with atomic_open(out / "metrics.json") as f:
        json.dump(metrics, f, indent=1)
    with atomic_open(out / "table.md") as f:
        f.write(table({name: metrics}))
    plot_drift({name: metrics}, out / "drift.png")
    if log and metrics["mlflow_run_id"]:
        log_evaluation(p, metrics["mlflow_run_id"], metrics, out)
    return metrics
