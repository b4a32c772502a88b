"""The settling test read off a study summary: paired differences by seed against a naive loop,
each hypothesis's verdict on worlds built to hold or refute it, the seed count, and the plot."""

import math

import numpy as np
import pytest

from ppg.study.settle import horizon, paired, plot_reward_vs_k, seeds_needed, settle, settle_markdown
from ppg.study.sim import summary

POLICIES = ["greedy", "k2", "k3", "k4", "full"]
TURNS = 6


def result(d, n, seed, policy, reward):
    return {"d": d, "n": n, "seed": seed, "policy": policy, "weights": "kind",
            "online": {m: {"mean": reward} for m in ("reward", "consistency", "coverage")},
            "decisions": {"invented": 0.5, "answered_known": 0.5, "exposed": 0.5}, "drift": [{"mean": 0.5}] * TURNS}


def study(reward, seeds=5, ds=(1, 2), ns=(100, 1000), k_star=lambda d: d + 2):
    """A summary whose held-out reward is reward(d, n, horizon) + seed noise shared by every
    policy of a (d, n, seed) (what pairing removes) + a small per-cell wobble."""
    rng = np.random.default_rng(0)
    rs = []
    for d in ds:
        for n in ns:
            for seed in range(seeds):
                shared = rng.normal(0, 0.05)
                for q in POLICIES:
                    rs.append(result(d, n, seed, q, reward(d, n, horizon(q, TURNS)) + shared + rng.normal(0, 0.005)))
    s = summary(rs)
    s["world"] = {"turns": TURNS, "probes": 2, "evasive_reward": 0.2, "predicted_k": {str(d): k_star(d) for d in ds}}
    return s


def peaked(d, n, k):  # the hypotheses' world: a peak at K* = d + 2 at both sizes, greedy and full below it
    return 0.6 - 0.05 * abs(k - (d + 2))


def test_paired_difference_is_the_mean_of_per_seed_differences():
    s = study(peaked)
    a, b = s["cells"]["1|1000|k3|kind"], s["cells"]["1|1000|greedy|kind"]
    naive = [a["reward"]["per_unit"][str(i)] - b["reward"]["per_unit"][str(i)] for i in range(5)]
    x = paired(a, b)
    assert x["n"] == 5 and x["mean"] == pytest.approx(np.mean(naive))
    assert x["sd"] == pytest.approx(np.std(naive, ddof=1))
    half = 2.776445 * np.std(naive, ddof=1) / math.sqrt(5)  # t(0.975, 4)
    assert (x["lo"], x["hi"]) == pytest.approx((np.mean(naive) - half, np.mean(naive) + half), abs=1e-6)
    # pairing removes the noise the policies of a seed share: the unpaired spread is ~10x wider
    assert x["sd"] < 0.2 * np.std(list(a["reward"]["per_unit"].values()), ddof=1)


def test_both_hypotheses_hold_where_the_reward_peaks_at_k_star_and_shrinks_with_less_data():
    def reward(d, n, k):  # K* = d + 2 wins at n = 1000; at n = 100 a shorter horizon wins, full worst
        best = d + 2 if n == 1000 else d + 1
        return 0.6 - 0.05 * abs(k - best)
    r = settle(study(reward), "kind")
    assert r["h1_verdict"] == "held" and r["h2_verdict"] == "held"
    assert r["cells"][("2", 1000)]["star"] == "k4" and r["cells"][("2", 100)]["win"] == "k3"
    assert r["h1"]["1"] == {"a": True, "b": True, "c": True}


def test_hypothesis_1_is_refuted_when_greedy_is_not_beaten():
    r = settle(study(lambda d, n, k: 0.6 - 0.02 * k), "kind")  # the shorter, the better: greedy wins
    assert r["h1_verdict"] == "refuted" and r["h1"]["1"]["a"] is False and r["h1"]["1"]["b"] is False


def test_hypothesis_1_is_not_shown_when_a_neighbour_ties_k_star():
    def reward(d, n, k):  # K* and K* + 1 equal up to the per-cell wobble; both beat greedy and full
        return 0.6 if k in (d + 2, d + 3) else 0.4
    r = settle(study(reward), "kind")
    assert r["h1_verdict"] in ("held", "not shown")  # (c) is a coin flip between the tied two
    assert all(v["a"] and v["b"] for v in r["h1"].values())


def test_hypothesis_2_is_refuted_when_the_longer_horizon_wins_significantly_on_little_data():
    def reward(d, n, k):  # at n = 100 full credit wins by a margin; at 1000 K* does
        return (0.6 + 0.02 * k) if n == 100 else peaked(d, n, k)
    r = settle(study(reward), "kind")
    assert r["h2_verdict"] == "refuted"
    assert r["h2"]["1"]["a"] is False and r["h2"]["1"]["longer_better"] is True


def test_one_seed_cannot_settle_anything():
    r = settle(study(peaked, seeds=1), "kind")
    assert r["h1"]["1"]["a"] is None and r["h1_verdict"] == "incomplete"


def test_seed_count_follows_the_stated_power_formula():
    s = study(peaked, seeds=3)
    r = settle(s, "kind")
    need = seeds_needed(r)
    c = r["cells"][("1", 1000)]
    delta = min(c["star_greedy"]["mean"], c["star_full"]["mean"])
    sd = max(c["star_greedy"]["sd"], c["star_full"]["sd"])
    assert need["1"] == {"delta": delta, "sd": sd, "seeds": math.ceil((2.9 * sd / delta) ** 2)}
    assert seeds_needed(settle(study(lambda d, n, k: 0.6 - 0.02 * k, seeds=3), "kind"))["1"]["seeds"] is None


def test_markdown_and_plot_report_the_verdicts(tmp_path):
    s = study(peaked)
    md = settle_markdown(s, "kind")
    assert "**Hypothesis 1: held.**" in md and "| 2 | 1000 | 5 | k4 | k4 (K = 4) |" in md
    plot_reward_vs_k(s, "kind", tmp_path / "r.png")
    assert (tmp_path / "r.png").stat().st_size > 1000
