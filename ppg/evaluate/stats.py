"""The statistics of evaluation: intervals of means and proportions, and the ranking AUC."""

import math

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
