"""The settling test of the K study (docs/results.md, "The settling test, stated before it runs"),
read mechanically off a study summary: paired differences of held-out reward over seeds, the
clauses of hypotheses 1 and 2, the seed count the pilot asks for, and the plot of reward against K.

The unit is the seed: every policy of a (d, n, seed) trained on the same logged data from the same
base and was evaluated on the same held-out personas, so R(A) - R(B) is paired by seed. The
predicted horizon K* per d comes from the world's parameters (summary["world"], ppg.sim.expected),
written before any result is read; nothing here is told which K won.
"""

import math

import numpy as np

from ppg.returns import POLICIES, parse_policy_id
from ppg.stats import mean_ci

POWER_Z = 2.0 + 0.9  # ~t(0.975) at a handful of seeds + z(0.80): 80% power at the 5% level


def horizon(policy: str, turns: int) -> int | None:
    """The credit horizon of a policy id (ppg.returns.POLICIES: greedy 1, k<K> K, full the
    dialogue's length; None for the untrained base and for classes that are not K-step)."""
    if policy == "base":
        return None
    kind, k = parse_policy_id(policy)
    rule = POLICIES[kind]
    return rule.horizon(k, turns) if rule.horizon else None


def _per_seed(row: dict | None) -> dict:
    return (row or {}).get("reward", {}).get("per_unit", {})


def paired(a: dict | None, b: dict | None) -> dict:
    """R(a) - R(b) over the seeds both rows have: mean, Student-t 95% interval, sd, n."""
    xa, xb = _per_seed(a), _per_seed(b)
    seeds = sorted(set(xa) & set(xb))
    d = [xa[s] - xb[s] for s in seeds]
    out = mean_ci(d)
    out["sd"] = float(np.std(d, ddof=1)) if len(d) > 1 else float("nan")
    return out


def above(x: dict) -> bool | None:
    """The interval lies above 0; None when there is no interval (fewer than 2 paired seeds):
    an untestable clause is never counted as held or as failed."""
    if x["n"] < 2 or x["lo"] != x["lo"]:
        return None
    return x["lo"] > 0


def _none_above(xs) -> bool | None:
    v = [above(x) for x in xs]
    return None if None in v else not any(v)


def grid(s: dict, w: str) -> dict:
    """(d, n) -> {policy: row} of the K-step policies (greedy, k<K>, full) of weighting w."""
    turns = s["world"]["turns"]
    out: dict = {}
    for key, row in s["cells"].items():
        d, n, policy, weights = key.split("|")
        if weights == w and horizon(policy, turns) is not None:
            out.setdefault((d, int(n)), {})[policy] = row
    return out


def settle(s: dict, w: str) -> dict:
    """Per (d, n): R by policy, the winner (mean argmax), K*'s policy, and the paired differences
    the hypotheses name; then each clause and each hypothesis's verdict."""
    world, turns = s["world"], s["world"]["turns"]
    g = grid(s, w)
    ds = sorted({d for d, _ in g if d in world["predicted_k"]}, key=int)
    ns = sorted({n for _, n in g})
    if not ds or len(ns) < 1:
        return {"cells": {}, "h1": None, "h2": None}
    lo_n, hi_n = ns[0], ns[-1]
    cells = {}
    for (d, n), rows in g.items():
        if d not in ds:
            continue
        k = world["predicted_k"][d]  # None: not even full credit prefers the dodge
        k_star = None if k is None else min(k, turns)
        star = next((q for q in rows if horizon(q, turns) == k_star), None)
        win = max(rows, key=lambda q: rows[q]["reward"]["mean"])
        c = {"rows": rows, "k_star": k_star, "star": star, "win": win,
             "vs_star": {q: paired(rows[q], rows.get(star)) for q in rows if q != star},
             "star_greedy": paired(rows.get(star), rows.get("greedy")),
             "star_full": paired(rows.get(star), rows.get("full")),
             "win_full": paired(rows[win], rows.get("full"))}
        cells[(d, n)] = c
    h1 = {}
    for d in ds:
        c = cells.get((d, hi_n))
        if not c or not c["star"]:
            h1[d] = {"a": None, "b": None, "c": None}
            continue
        h1[d] = {"a": above(c["star_greedy"]), "b": _none_above(c["vs_star"].values()), "c": c["win"] == c["star"]}
    h2 = {}
    for d in ds:
        small, large = cells.get((d, lo_n)), cells.get((d, hi_n))
        if not small or not large or lo_n == hi_n:
            h2[d] = {"a": None, "b": None, "longer_better": None}
            continue
        k_small, k_large = horizon(small["win"], turns), horizon(large["win"], turns)
        longer = paired(small["rows"][small["win"]], small["rows"].get(large["win"]))  # at n = lo_n
        h2[d] = {"a": k_small <= k_large, "b": above(small["win_full"]),
                 "longer_better": above(longer) if k_small > k_large else False, "small_minus_large": longer}
    return {"cells": cells, "ds": ds, "ns": ns, "h1": h1, "h2": h2,
            "h1_verdict": _verdict(h1, refute=("a", "b"), show=("c",)),
            "h2_verdict": _verdict({d: {"no_longer_better": None if v["longer_better"] is None
                                        else not v["longer_better"],
                                        "a": v["a"], "b": v["b"]} for d, v in h2.items()},
                                   refute=("no_longer_better",), show=("a", "b"))}


def _verdict(clauses: dict, refute, show) -> str:
    """refuted: a refuting clause fails at some d; incomplete: otherwise some clause could not be
    evaluated (a policy or size missing, under 2 seeds); not shown: only the other clauses fail;
    held: every clause at every d."""
    if any(v.get(k) is False for v in clauses.values() for k in refute):
        return "refuted"
    if not clauses or any(v.get(k) is None for v in clauses.values() for k in (*refute, *show)):
        return "incomplete"
    if any(not v[k] for v in clauses.values() for k in show):
        return "not shown"
    return "held"


def seeds_needed(result: dict) -> dict:
    """Per d at the largest n: S = ceil((POWER_Z sd_D / delta)^2) for D = R(K*) - R(greedy) and
    R(K*) - R(full), delta the smaller of the two means; None where delta <= 0 (no effect in the
    predicted direction to size for)."""
    out = {}
    for d in result.get("ds", []):
        c = result["cells"].get((d, result["ns"][-1]))
        if not c or not c["star"]:
            continue
        a, b = c["star_greedy"], c["star_full"]
        delta, sd = min(a["mean"], b["mean"]), max(a["sd"], b["sd"])
        out[d] = {"delta": delta, "sd": sd,
                  "seeds": math.ceil((POWER_Z * sd / delta) ** 2) if delta > 0 and sd == sd else None}
    return out


def _ci(x: dict, digits=3) -> str:
    if not x or x.get("n", 0) == 0:
        return "-"
    if x["lo"] != x["lo"]:
        return f"{x['mean']:+.{digits}f}"
    return f"{x['mean']:+.{digits}f} [{x['lo']:+.{digits}f}, {x['hi']:+.{digits}f}]"


def _yes(x) -> str:
    return {True: "yes", False: "**no**", None: "-"}[x]


def settle_markdown(s: dict, w: str) -> str:
    r = settle(s, w)
    if not r["cells"]:
        return f"(no K-step cells of weighting {w}, or no predicted K in the summary)\n"
    turns = s["world"]["turns"]
    out = [f"Weighting `{w}`; K\\* per d from the world (probes {s['world']['probes']}, dodge "
           f"{s['world']['evasive_reward']}): " + ", ".join(f"d = {d}: K\\* = {r['cells'][(d, r['ns'][-1])]['k_star']}"
                                                           for d in r["ds"] if (d, r["ns"][-1]) in r["cells"]) + ".",
           "", "Paired differences over seeds (mean [95% t interval]); K_win = the policy of highest mean reward.", "",
           "| d | n | seeds | K* policy | K_win | R(K*) − R(greedy) | R(K*) − R(full) | best other − R(K*) |",
           "|---|---|---|---|---|---|---|---|"]
    for (d, n), c in sorted(r["cells"].items(), key=lambda kv: (int(kv[0][0]), kv[0][1])):
        others = [(q, x) for q, x in c["vs_star"].items()]
        q, x = max(others, key=lambda qx: qx[1]["mean"]) if others else ("-", {})
        seeds = c["star_greedy"]["n"] if c["star"] else 0
        out.append(f"| {d} | {n} | {seeds} | {c['star'] or 'not in grid'} | {c['win']} (K = "
                   f"{horizon(c['win'], turns)}) | {_ci(c['star_greedy'])} | {_ci(c['star_full'])} | {q}: {_ci(x)} |")
    out += ["", f"Hypothesis 1 (n = {r['ns'][-1]}): (a) R(K\\*) − R(greedy) above 0; (b) no R(K) − R(K\\*) above 0; "
            "(c) K_win = K\\*.", "", "| d | (a) | (b) | (c) |", "|---|---|---|---|"]
    out += [f"| {d} | {_yes(v['a'])} | {_yes(v['b'])} | {_yes(v['c'])} |" for d, v in r["h1"].items()]
    out += ["", f"**Hypothesis 1: {r['h1_verdict']}.**", "",
            f"Hypothesis 2 (n = {r['ns'][0]} against n = {r['ns'][-1]}): (a) K_win({r['ns'][0]}) ≤ "
            f"K_win({r['ns'][-1]}); refuting only where the longer winner is also significantly better at "
            f"n = {r['ns'][0]}; (b) at n = {r['ns'][0]}, R(K_win) − R(full) above 0.", "",
            "| d | (a) | R(K_win(small)) − R(K_win(large)) at the small n | (b) |", "|---|---|---|---|"]
    out += [f"| {d} | {_yes(v['a'])} | {_ci(v.get('small_minus_large', {}))} | {_yes(v['b'])} |"
            for d, v in r["h2"].items()]
    out += ["", f"**Hypothesis 2: {r['h2_verdict']}.**", ""]
    need = seeds_needed(r)
    if need:
        out += [f"Seeds the pre-stated power asks for (S = ⌈(2.9 σ_D / δ)²⌉ at n = {r['ns'][-1]}; δ = the smaller "
                "of the two K\\* differences, σ_D the larger sd): " +
                "; ".join(f"d = {d}: δ {v['delta']:+.3f}, σ_D {v['sd']:.3f} → "
                          f"{v['seeds'] if v['seeds'] else 'no effect in the predicted direction'}"
                          for d, v in need.items()) + ".", ""]
    return "\n".join(out)


def plot_reward_vs_k(s: dict, w: str, path) -> None:
    """Held-out reward against the credit horizon K, one panel per d, one line per data size, K*
    marked: the "best K tracks d" picture."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    r, turns = settle(s, w), s["world"]["turns"]
    fig, axes = plt.subplots(1, len(r["ds"]), figsize=(3.4 * len(r["ds"]), 3.0), squeeze=False, sharey=True)
    for ax, d in zip(axes[0], r["ds"]):
        for n, marker in zip(r["ns"], "osD^v"):
            c = r["cells"].get((d, n))
            if not c:
                continue
            pts = sorted((horizon(q, turns), row["reward"]) for q, row in c["rows"].items())
            x = [k for k, _ in pts]
            lo = [max(m["mean"] - m["lo"], 0) if m["lo"] == m["lo"] else 0 for _, m in pts]
            hi = [max(m["hi"] - m["mean"], 0) if m["hi"] == m["hi"] else 0 for _, m in pts]
            ax.errorbar(x, [m["mean"] for _, m in pts], yerr=[lo, hi], fmt=f"{marker}-", ms=3, capsize=2,
                        label=f"n = {n}")
            k_star = c["k_star"]
        ax.axvline(k_star, color="grey", ls=":", lw=1)
        ax.set_xticks(sorted({horizon(q, turns) for c in r["cells"].values() for q in c["rows"]}))
        ax.set_title(f"d = {d} (K* = {k_star}; full = {turns})", fontsize=9)
        ax.set_xlabel("credit horizon K", fontsize=8)
    axes[0][0].set_ylabel(f"held-out reward ({w})", fontsize=8)
    axes[0][-1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
