"""The definitions, one loop at a time: ground truth for tests and benchmarks.

Slow on purpose: each weight is summed exactly as the paper writes it, so the vectorized code in
ppg.returns can be checked against it (tests) and timed against it (benchmarks/returns.py).
"""

import math

import torch


def credited_turns(policy, t, n, k=None, starts=None, seg_len=None):
    """S_t as a range of 0-based turn indices for a dialogue of n turns."""
    if policy == "bc":  # credits no reward: its weight is 1 (naive_partial_returns)
        return range(t, t)
    if policy == "greedy":
        return range(t, t + 1)
    if policy == "kstep":
        return range(t, min(t + k, n))
    if policy == "full":
        return range(t, n)
    if seg_len is not None:
        return range(t, min((t // seg_len + 1) * seg_len, n))
    end = next((j for j in range(t + 1, n) if starts[j]), n)
    return range(t, end)


def naive_partial_returns(rewards, mask, policy, k=None, segments=None, gamma=1.0):
    """partial_returns by a double loop, in float64 (NaN where S_t holds a NaN reward)."""
    B, T = rewards.shape
    r, m = rewards.double().tolist(), mask.tolist()
    starts = segments.tolist() if isinstance(segments, torch.Tensor) else [None] * B
    seg_len = segments if isinstance(segments, int) else None
    w = torch.zeros(B, T, dtype=torch.float64)
    for b in range(B):
        n = sum(m[b])
        for t in range(n):
            S = credited_turns(policy, t, n, k, starts[b], seg_len)
            w[b, t] = 1.0 if policy == "bc" else math.fsum(gamma ** (j - t) * r[b][j] for j in S)  # NaN stays NaN
    return w


def naive_baseline(w, mask, kind, groups=None, kinds=None):
    """baseline(...) by loops over the known (non-NaN, real) weights."""
    B, T = w.shape
    known = [(b, t) for b in range(B) for t in range(T) if mask[b, t] and not math.isnan(w[b, t])]
    out = torch.zeros(B, T, dtype=torch.float64)
    for b in range(B):
        for t in range(int(mask[b].sum())):
            if kind == "none":
                continue
            if kind == "batch_mean":
                pool = known
            elif kind == "turn_mean":
                pool = [(c, s) for c, s in known if s == t]
            elif kind == "group_loo":
                pool = [(c, s) for c, s in known if s == t and c != b and groups[c] == groups[b]]
            else:
                pool = [(c, s) for c, s in known if s == t and c != b and kinds[c, s] == kinds[b, t]]
            vals = [float(w[c, s]) for c, s in pool]
            out[b, t] = sum(vals) / len(vals) if vals else (float("nan") if kind in ("group_loo", "turn_kind")
                                                            else 0.0)
    return out


def naive_turn_scores(model, rows, policy: str) -> list[float]:
    """ppg.evaluate.offline.offline_turns' likelihood-ratio scores, one window per forward pass
    over the full logits, the reference as the same LoRA model with its adapters off."""
    import numpy as np

    from ppg.losses import token_logprobs, turn_logprobs
    from ppg.train.batching import Example, collate

    out = []
    with torch.no_grad():
        for r in rows:
            b = collate([Example(np.asarray(r["input_ids"]), np.asarray(r["turn_index"]),
                                 np.asarray(r[f"w_{policy}"]))], 0)
            ell, present = turn_logprobs(token_logprobs(model(input_ids=b["input_ids"]).logits, b["input_ids"]),
                                         b["turn_index"], r["n_turns"])
            with model.disable_adapter():
                ref, _ = turn_logprobs(token_logprobs(model(input_ids=b["input_ids"]).logits, b["input_ids"]),
                                       b["turn_index"], r["n_turns"])
            out += [float(ell[0, t] - ref[0, t]) for t in range(r["n_turns"]) if present[0, t]]
    return out
