"""Offline evaluation on logged data with verdicts (e.g. Consistent-LLMs): the likelihood-ratio
score log pi_theta(a_t|x_t) - log pi_ref(a_t|x_t) per turn should rank consistent turns above
contradicting ones (AUC, bootstrap CI over persona groups), plus the held-out weighted NLL (the
offline PPG objective). Too few contradicting turns -> "refused", not scored."""

from contextlib import nullcontext

import numpy as np
import torch

from ppg.stats import grouped_auc, mean_ci
from ppg.losses import token_logprobs, turn_logprobs
from ppg.train.batching import Example, collate


def offline_metrics(turns: list[dict], min_contradictions: int, seed: int = 0, boots: int = 200) -> dict:
    """turns: {group, reward (0/1/NaN), score (LR), nll_term (-w log pi or NaN)} per judged turn."""
    known = [t for t in turns if t["reward"] == t["reward"]]
    w = [t["nll_term"] for t in turns if t["nll_term"] == t["nll_term"]]
    return {"turns": len(known), "contradictions": sum(t["reward"] < 0.5 for t in known), "weighted_nll": mean_ci(w),
            "auc": grouped_auc(turns, min_contradictions, seed, boots)}


@torch.no_grad()
def offline_turns(model, ref, lora: bool, tok, rows, policy: str, ref_cache: dict | None = None) -> list[dict]:
    """Per judged turn of each row: LR score, reward, raw weight, weighted NLL term, persona group.
    ref_cache (row "sequence_id:window" -> the reference's per-turn log-probs) is read where it
    has the row and filled where not: the reference is the same model for every trained policy."""
    out, dev = [], next(model.parameters()).device
    for r in rows:
        b = collate([Example(np.asarray(r["input_ids"]), np.asarray(r["turn_index"]), np.asarray(r[f"w_{policy}"]))],
                    tok.pad_token_id)
        b = {k: v.to(dev) if torch.is_tensor(v) else v for k, v in b.items()}
        lp = token_logprobs(model(input_ids=b["input_ids"]).logits, b["input_ids"])
        n = r["n_turns"]
        ell, present = turn_logprobs(lp, b["turn_index"], n)
        # strict: two rows must never share a key
        key = f"{r['sequence_id']}:{r['window']}" if ref_cache is not None else None
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
