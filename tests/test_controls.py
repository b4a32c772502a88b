"""The controls of every comparison, the untrained base and bc (plain fine-tuning, no reward):
each policy's paired difference against them on the primary metric, words when no policy clears
one, and neither is ever registered."""

import pytest

from ppg.config_ops import RegistryConfig
from ppg.evaluate.report import versus_controls


def versus_base(primary, metrics, base, cfg):
    words, table, diffs = versus_controls(primary, metrics, {"base": base}, cfg)
    return words + table, {pol: d["lo"] for pol, d in diffs.get("base", {}).items()}


def online(values: list[float]) -> dict:
    units = {f"roll-{i}": v for i, v in enumerate(values)}
    mean = sum(values) / len(values)
    return {"online": {"reward": {"mean": mean, "lo": mean - 0.1, "hi": mean + 0.1, "n": len(values),
                                  "per_unit": units}}}


BASE = [0.50, 0.62, 0.55, 0.70, 0.48, 0.66, 0.58, 0.61]
CFG = RegistryConfig(method="sign_flip", confidence=0.95)


def test_a_run_where_no_policy_differs_from_the_base_says_so():
    same = online(BASE)
    noise = online([b + d for b, d in zip(BASE, [0.05, -0.04, 0.02, -0.06, 0.03, -0.02, 0.01, -0.03])])
    text, bounds = versus_base("online.reward", {"greedy": same, "k3": noise}, online(BASE), CFG)
    assert set(bounds) == {"greedy", "k3"} and all(lo < 0 for lo in bounds.values())
    assert text.startswith("No policy's interval against the untrained base clears 0 on `online.reward`")
    assert "| greedy | online.reward improvement +0.0000" in text and "over 8 paired personas" in text


def test_a_policy_better_on_every_persona_clears_the_base_and_is_named():
    better = online([b + 0.2 + 0.01 * i for i, b in enumerate(BASE)])
    text, bounds = versus_base("online.reward", {"greedy": online(BASE), "k3": better}, online(BASE), CFG)
    assert bounds["k3"] > 0 >= bounds["greedy"]
    assert "Better than the untrained base on `online.reward` (interval above 0): k3." in text
    row = next(x for x in text.splitlines() if x.startswith("| k3 |"))
    assert "improvement +0.2350" in row  # the mean of 0.20 ... 0.27


def test_without_a_base_measurement_or_with_an_offline_primary_nothing_is_claimed():
    assert versus_base("online.reward", {"k3": online(BASE)}, None, CFG) == (
        "No measurement of the untrained base on `online.reward`: no comparison with it.\n", {})
    text, bounds = versus_base("offline.auc", {"k3": {"offline": {"auc": {"mean": 0.7}}}},
                                {"offline": {"auc": {"mean": 0.5}}}, CFG)
    assert bounds == {} and "offline metric" in text


def test_a_tie_on_validation_goes_to_the_policy_with_more_evidence_against_the_base():
    from ppg.metrics import best_policy

    tied = {"greedy": online(BASE), "k3": online(BASE), "full": online([b - 0.1 for b in BASE])}
    assert best_policy("online.reward", tied)[1] == "greedy"  # no evidence: the first of the tie
    assert best_policy("online.reward", tied, {"greedy": -0.05, "k3": 0.01, "full": 0.3})[1] == "k3"
    assert best_policy("online.reward", tied, {"greedy": None, "k3": -0.2})[1] == "k3"  # a bound beats none


def test_each_policy_is_compared_with_both_controls_and_the_words_come_before_the_table():
    bc = online([b + 0.1 for b in BASE])
    better = online([b + 0.2 + 0.01 * i for i, b in enumerate(BASE)])
    words, table, diffs = versus_controls("online.reward", {"greedy": bc, "k3": better},
                                          {"base": online(BASE), "bc": bc}, CFG)
    assert words.splitlines() == [
        "Better than the untrained base on `online.reward` (interval above 0): greedy, k3.",
        "Better than bc, the reward-free control on `online.reward` (interval above 0): k3."]
    assert table.splitlines()[0] == ("| policy | against the untrained base (paired) | "
                                     "against bc, the reward-free control (paired) |")
    assert diffs["bc"]["greedy"]["mean"] == pytest.approx(0.0) and diffs["bc"]["k3"]["mean"] == pytest.approx(0.135)
    words, _, diffs = versus_controls("online.reward", {"k3": online(BASE)}, {"base": online(BASE), "bc": None}, CFG)
    assert "No measurement of bc, the reward-free control on `online.reward`" in words and set(diffs) == {"base"}


def test_bc_trains_unshaped_whatever_baseline_the_policies_use():
    from ppg.returns import is_control, trained_shaping

    assert trained_shaping("bc", "turn_kind", True, [0.0, 0.5]) == ("none", False, None)  # a baseline zeroes it
    assert trained_shaping("k3", "turn_kind", True, [0.0, 0.5]) == ("turn_kind", True, [0.0, 0.5])
    assert is_control("bc") and not any(is_control(x) for x in ("greedy", "k3", "full", "segment"))


def test_a_best_policy_not_shown_better_than_the_base_is_not_registered_unless_asked(tmp_path):
    from dataclasses import replace

    from mlflow import MlflowClient

    from ppg.config import Params
    from ppg.registry import register, registration_step

    p = Params()
    Registry = lambda: MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")  # an empty registry  # noqa: E731
    flat = {"mean": 0.01, "lo": -0.02, "hi": 0.04, "n": 8}
    clear = {"mean": 0.1, "lo": 0.05, "hi": 0.15, "n": 8}
    m = {"k3": online(BASE)}
    action, why = registration_step(p, Registry(), "k3", m, {"k3": "run"}, {"k3": True}, {"k3": flat})
    assert action == "none" and "k3, is not shown better than the untrained base" in why
    assert "+0.010 [-0.020, +0.040] over 8 personas" in why
    assert registration_step(p, Registry(), "k3", m, {"k3": "run"}, {}, {"k3": clear}) == ("register", "")
    action, why = registration_step(p, Registry(), "k3", m, {"k3": "run"}, {}, None)  # unknown is not a pass
    assert action == "none" and "(the untrained base was not measured)" in why
    few = {"mean": 0.2, "lo": None, "hi": None, "n": 4}  # too few pairs for a sign-flip bound
    assert "(4 paired personas give no interval)" in registration_step(p, Registry(), "k3", m, {"k3": "run"}, {},
                                                                      {"k3": few})[1]
    anyway = replace(p, registry=replace(p.registry, require_better_than_base=False))
    assert registration_step(anyway, Registry(), "k3", m, {"k3": "run"}, {}, {"k3": flat}) == ("register", "")
    with pytest.raises(ValueError, match="bc is a control"):
        register(p, "bc")


def test_the_plot_takes_an_interval_that_does_not_hold_its_estimate_and_skips_unknown_ones(tmp_path):
    from ppg.evaluate.report import plot_policies

    rows = {"k3": {"offline": {"auc": {"mean": 0.71, "lo": 0.72, "hi": 0.80, "n": 40}}},  # a percentile bootstrap's
            "base (untrained, control)": {"offline": {"auc": {"mean": 0.6, "lo": None, "hi": None, "n": 3}}},
            "bc (reward-free, control)": {"offline": {"auc": {"refused": True, "reason": "n = 3"}}}}
    plot_policies(rows, ["offline.auc"], tmp_path / "policies.png")
    assert (tmp_path / "policies.png").stat().st_size > 5_000
