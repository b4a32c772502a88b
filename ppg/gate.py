"""The promotion gate's statistics: is the challenger better than the champion, on evidence?

Both models are measured on the same test units (online: the same personas and sampling seeds;
offline: the same logged turns), so the comparison is paired, which removes the personas'
own spread from the noise. Only units both models have are paired: a dialogue the partner
dropped for either model (ppg.partner_models) is no pair, and registry.min_pairs counts pairs.
For each metric the gate computes the challenger's IMPROVEMENT in the metric's better direction
(positive = challenger better, also for lower-is-better metrics) with an interval at
registry.confidence:

  sign_flip          per-persona differences d_i; H0 "mean improvement <= delta" is tested by
                     flipping the signs of d_i - delta (all 2^n flips for n <= 16, else 20,000
                     seeded ones), and the interval is the set of delta no one-sided test at
                     (1 - confidence) / 2 rejects (found by bisection). Exact under symmetric
                     per-persona noise, no normality assumed; needs n >= 6 at 95%.
  paired_t           mean of d_i +- t quantile * sd / sqrt(n)
  cluster_bootstrap  offline metrics (AUC, weighted NLL): persona groups are resampled with
                     replacement, both models' metric recomputed on the same resample; the
                     percentile interval of the difference (turns of one persona are not
                     independent, and an AUC is not a mean over units). A percentile bootstrap
                     is too narrow with few groups (resamples where one label class is missing
                     are dropped, too): it is the weakest of the three, and registry.min_pairs
                     applies to its groups.

The first two keep their level with few personas, where a percentile bootstrap would not.
"""

import math
import random

import numpy as np

from ppg.metrics import direction, metric_spec

EXACT_UP_TO = 16  # pairs: beyond this, 20,000 random sign vectors instead of all 2^n


def _signs(n: int, seed: int) -> np.ndarray:
    if n <= EXACT_UP_TO:
        return 1 - 2 * ((np.arange(2 ** n)[:, None] >> np.arange(n)) & 1)
    rng = np.random.default_rng(seed)
    return np.vstack([np.ones(n, dtype=int), rng.choice([-1, 1], size=(19_999, n))])


def sign_flip_interval(d, confidence: float = 0.95, seed: int = 0) -> tuple[float | None, float | None]:
    """(lo, hi) of the mean paired difference by inverting the one-sided sign-flip tests; None
    for a bound the test cannot reach with so few pairs (every flip as extreme: p >= 2^-n)."""
    d = np.asarray(d, dtype=float)
    n, alpha = len(d), (1 - confidence) / 2
    if n == 0:
        return None, None
    s = _signs(n, seed)

    def p_above(delta):  # P(flipped mean >= observed mean) for the shifted differences
        x = d - delta
        return float(np.mean(s @ x >= x.sum() - 1e-12))

    def p_below(delta):
        x = d - delta
        return float(np.mean(s @ x <= x.sum() + 1e-12))

    if max(p_above(d.min() - 1.0), p_below(d.max() + 1.0)) > alpha:
        return None, None  # not even an all-positive sample would reject: too few pairs

    def bisect(p, lo, hi, rejects_low):  # the boundary between rejected and kept deltas
        for _ in range(60):
            mid = (lo + hi) / 2
            if (p(mid) <= alpha) == rejects_low:
                lo = mid
            else:
                hi = mid
        return lo if rejects_low else hi

    span = max(d.max() - d.min(), 1e-9)
    lo = bisect(p_above, d.min() - span, d.max() + span, True)  # deltas below lo are rejected
    hi = bisect(p_below, d.min() - span, d.max() + span, False)
    return float(lo), float(hi)


def paired_t_interval(d, confidence: float = 0.95) -> tuple[float | None, float | None]:
    from scipy.stats import t as student_t

    d = np.asarray(d, dtype=float)
    if len(d) < 2:
        return None, None
    h = student_t.ppf(1 - (1 - confidence) / 2, len(d) - 1) * d.std(ddof=1) / math.sqrt(len(d))
    return float(d.mean() - h), float(d.mean() + h)


def cluster_bootstrap(name: str, chal: list[dict], champ: list[dict], confidence: float, boots: int,
                      seed: int = 0) -> dict:
    """Improvement of an offline metric with a persona-group bootstrap that recomputes both
    models' metric on every resample. chal/champ: ppg.evaluate.offline.offline_turns of the same rows."""
    by_key = {t["key"]: t for t in champ}
    pairs = [(t, by_key[t["key"]]) for t in chal if t["key"] in by_key]
    groups = sorted({a["group"] for a, _ in pairs})
    by_group = {g: [(a, b) for a, b in pairs if a["group"] == g] for g in groups}
    sign, stat = direction(name), metric_spec(name).offline_stat
    if stat is None:
        raise ValueError(f"{name}: not an offline metric (ppg.metrics.METRICS gives it no offline statistic)")

    def diff(sample):
        return sign * (stat([a for a, _ in sample]) - stat([b for _, b in sample]))

    mean = diff(pairs) if pairs else float("nan")
    rng, reps = random.Random(seed), []
    for _ in range(boots if len(groups) > 1 else 0):
        x = diff([pair for g in (rng.choice(groups) for _ in groups) for pair in by_group[g]])
        if x == x:
            reps.append(x)
    alpha = (1 - confidence) / 2
    lo, hi = (np.quantile(reps, [alpha, 1 - alpha]).tolist() if reps else [None, None])
    return {"mean": mean if mean == mean else None, "lo": lo, "hi": hi, "n": len(groups),
            "method": "cluster_bootstrap"}


def paired_difference(name: str, chal: dict, champ: dict, chal_turns, champ_turns, cfg, seed: int = 0) -> dict:
    """The challenger's improvement on one metric: {mean, lo, hi, n, method}; bounds may be None
    when the data cannot give them. cfg: ppg.config_ops.RegistryConfig."""
    if metric_spec(name).offline_stat is not None:
        return cluster_bootstrap(name, chal_turns or [], champ_turns or [], cfg.confidence, cfg.boots, seed)
    a, b = _per_unit(chal, name), _per_unit(champ, name)
    units = sorted(set(a) & set(b))
    d = direction(name) * (np.array([a[u] for u in units]) - np.array([b[u] for u in units]))
    lo, hi = (sign_flip_interval(d, cfg.confidence, seed) if cfg.method == "sign_flip"
              else paired_t_interval(d, cfg.confidence))
    return {"mean": float(d.mean()) if len(d) else None, "lo": lo, "hi": hi, "n": len(units), "method": cfg.method}


def _per_unit(metrics: dict, name: str) -> dict:
    from ppg.metrics import metric_entry

    x = metric_entry(metrics, name)
    return x.get("per_unit", {}) if isinstance(x, dict) else {}


def _fmt(x) -> str:
    return "?" if x is None else f"{x:+.4f}"


def describe(name: str, diff: dict, cfg) -> str:
    what = "persona groups" if diff["method"] == "cluster_bootstrap" else "paired personas"
    return (f"{name} improvement {_fmt(diff['mean'])}, {cfg.confidence:.0%} {diff['method'].replace('_', '-')} "
            f"interval [{_fmt(diff['lo'])}, {_fmt(diff['hi'])}] over {diff['n']} {what}")


def decide(primary: str, chal: dict, champ: dict | None, chal_turns, champ_turns, cfg, seed: int = 0) -> dict:
    """{promoted, reason, difference, secondary}. With no champion the thresholds decide; with one,
    the primary metric's paired lower bound must clear registry.margin, on at least
    registry.min_pairs units, and no registry.non_inferiority metric may fall by more than allowed."""
    from ppg.metrics import metric
    from ppg.metrics import passes

    metric_spec(primary, "eval.primary")  # an unknown metric is refused, never read as absent
    x = metric(chal, primary)
    failed = [f"{k} = {metric(chal, k)} ({'minimum' if direction(k) > 0 else 'maximum'} {t})"
              for k, t in cfg.thresholds.items() if not passes(metric(chal, k), t, k)]
    out = {"difference": None, "secondary": {}}
    if x is None:
        return {**out, "promoted": False, "reason": f"{primary} is unavailable for the challenger (refused or absent)"}
    if failed:
        return {**out, "promoted": False, "reason": "below the thresholds: " + "; ".join(failed)}
    if champ is None:
        return {**out, "promoted": True, "reason": f"{primary} {x:.4f} passes the thresholds; no champion yet"}
    diff = paired_difference(primary, chal, champ, chal_turns, champ_turns, cfg, seed)
    out["difference"] = diff
    said = describe(primary, diff, cfg)
    if diff["n"] < cfg.min_pairs:
        return {**out, "promoted": False, "reason": f"{said}: fewer than registry.min_pairs = {cfg.min_pairs}"}
    if diff["lo"] is None or not diff["lo"] > cfg.margin:
        return {**out, "promoted": False,
                "reason": f"{said}: its lower bound is not above registry.margin = {cfg.margin:g}"}
    for name, loss in cfg.non_inferiority.items():
        sec = paired_difference(name, chal, champ, chal_turns, champ_turns, cfg, seed)
        out["secondary"][name] = sec
        if sec["n"] < cfg.min_pairs or sec["lo"] is None:
            return {**out, "promoted": False, "reason": f"{said}, but {describe(name, sec, cfg)}: too few pairs "
                                                        f"to bound its loss (registry.non_inferiority)"}
        if sec["lo"] < -loss:
            return {**out, "promoted": False, "reason": f"{said}, but {describe(name, sec, cfg)}: it may have got "
                                                        f"worse by more than registry.non_inferiority = {loss:g}"}
    return {**out, "promoted": True, "reason": f"{said}: above registry.margin = {cfg.margin:g}"}


