"""Offline evaluation on logged data with verdicts (e.g. Consistent-LLMs): the likelihood-ratio
score log pi_theta(a_t|x_t) - log pi_ref(a_t|x_t) per turn should rank consistent turns above
contradicting ones (AUC, bootstrap CI over persona groups), plus the held-out weighted NLL (the
offline PPG objective). Too few contradicting turns -> "refused", not scored."""

from contextlib import nullcontext

import numpy as np
import torch

from ppg.stats import grouped_auc, mean_ci
from ppg.losses import target_logprobs, turn_logprobs
from ppg.train.batching import Example, collate


def offline_metrics(turns: list[dict], min_contradictions: int, seed: int = 0, boots: int = 200) -> dict:
    """turns: {group, reward (0/1/NaN), score (LR), nll_term (-w log pi or NaN)} per judged turn."""
    known = [t for t in turns if t["reward"] == t["reward"]]
    w = [t["nll_term"] for t in turns if t["nll_term"] == t["nll_term"]]
    return {"turns": len(known), "contradictions": sum(t["reward"] < 0.5 for t in known), "weighted_nll": mean_ci(w),
            "auc": grouped_auc(turns, min_contradictions, seed, boots)}


@torch.no_grad()
def offline_turns(model, ref, lora: bool, tok, rows, policy: str, ref_cache: dict | None = None,
                  batch_size: int = 8) -> list[dict]:
    """Per judged turn of each row: LR score, reward, raw weight, weighted NLL term, persona group.
    Rows are scored in batches of similar length (right-padded: a causal model's real tokens never
    see the padding), the head only at target tokens (ppg.losses.target_logprobs); the reference
    is the same model with its adapters off (LoRA) or the frozen copy. ref_cache (row
    "sequence_id:window" -> the reference's per-turn log-probs) is read where it has the row and
    filled where not: the reference is the same model for every trained policy."""
    dev = next(model.parameters()).device
    key = [f"{r['sequence_id']}:{r['window']}" for r in rows]  # strict: two rows must never share a key

    def per_turn(net, idx, adapters_off):
        b = collate([Example(np.asarray(rows[i]["input_ids"]), np.asarray(rows[i]["turn_index"]),
                             np.asarray(rows[i][f"w_{policy}"])) for i in idx], tok.pad_token_id)
        with (net.disable_adapter() if adapters_off else nullcontext()):
            lp = target_logprobs(net, b["input_ids"].to(dev), b["attention_mask"].to(dev), b["turn_index"].to(dev))
        return turn_logprobs(lp, b["turn_index"].to(dev), max(rows[i]["n_turns"] for i in idx))

    ell_of, ref_of = {}, {}
    order = sorted(range(len(rows)), key=lambda i: len(rows[i]["input_ids"]))
    for s in range(0, len(order), batch_size):
        idx = order[s:s + batch_size]
        ell, present = per_turn(model, idx, False)
        ell_of.update({i: (ell[j].tolist(), present[j].tolist()) for j, i in enumerate(idx)})
        todo = [i for i in idx if ref_cache is None or key[i] not in ref_cache]
        if todo:
            ell_ref, _ = per_turn(model if lora else ref, todo, lora)
            for j, i in enumerate(todo):
                ref_of[i] = ell_ref[j, :rows[i]["n_turns"]].tolist()
                if ref_cache is not None:
                    ref_cache[key[i]] = ref_of[i]
        ref_of.update({i: ref_cache[key[i]] for i in idx if i not in ref_of})
    out = []
    for i, r in enumerate(rows):
        ell, present = ell_of[i]
        for t in range(r["n_turns"]):
            if present[t]:
                w = float(r[f"w_{policy}"][t])
                out.append({"key": f"{key[i]}:{t}", "group": r["persona_group"], "reward": float(r["reward"][t]),
                            "weight": w, "score": float(ell[t] - ref_of[i][t]),
                            "nll_term": -w * float(ell[t]) if w == w else float("nan")})
    return out
