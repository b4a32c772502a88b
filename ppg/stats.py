"""The statistics that evaluation, the promotion gate and the reward model's training share:
intervals of means and proportions, the ranking AUC, and its persona-group bootstrap. (A leaf
module: every layer above may use it.)"""

import math
import random

import numpy as np

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


def grouped_auc(turns: list[dict], min_contradictions: int, seed: int = 0, boots: int = 200) -> dict:
    """AUC of turn scores against verdicts (reward >= 0.5 = consistent) with a percentile bootstrap
    interval that resamples persona groups (turns of one persona are not independent); refused,
    with the reason, when fewer than min_contradictions turns contradict or none is consistent.
    turns: {group, reward (0/1; NaN = unknown, left out), score}."""
    known = [t for t in turns if t["reward"] == t["reward"]]
    n_bad = sum(t["reward"] < 0.5 for t in known)
    if n_bad < min_contradictions or n_bad == len(known):
        return {"refused": True, "reason": f"refused (n = {n_bad} contradicting turns, need {min_contradictions})"}
    a = auc([t["score"] for t in known], [t["reward"] >= 0.5 for t in known])
    groups = sorted({t["group"] for t in known})
    by = {g: [t for t in known if t["group"] == g] for g in groups}
    rng, reps = random.Random(seed), []
    for _ in range(boots):
        sample = [t for g in (rng.choice(groups) for _ in groups) for t in by[g]]
        x = auc([t["score"] for t in sample], [t["reward"] >= 0.5 for t in sample])
        if x == x:
            reps.append(x)
    lo, hi = (np.percentile(reps, [2.5, 97.5]).tolist() if reps else [float("nan")] * 2)
    return {"mean": a, "lo": lo, "hi": hi, "n": len(known), "groups": len(groups)}
