"""The untrained base is the control of every comparison: each policy's paired difference
against it on the primary metric, and words when no policy clears it."""

from ppg.config_ops import RegistryConfig
from ppg.evaluate.report import versus_base


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
        "No measurement of the untrained base on `online.reward`: no control to compare with.\n", {})
    text, bounds = versus_base("offline.auc", {"k3": {"offline": {"auc": {"mean": 0.7}}}},
                                {"offline": {"auc": {"mean": 0.5}}}, CFG)
    assert bounds == {} and "offline metric" in text


def test_a_tie_on_validation_goes_to_the_policy_with_more_evidence_against_the_base():
    from ppg.metrics import best_policy

    tied = {"greedy": online(BASE), "k3": online(BASE), "full": online([b - 0.1 for b in BASE])}
    assert best_policy("online.reward", tied)[1] == "greedy"  # no evidence: the first of the tie
    assert best_policy("online.reward", tied, {"greedy": -0.05, "k3": 0.01, "full": 0.3})[1] == "k3"
    assert best_policy("online.reward", tied, {"greedy": None, "k3": -0.2})[1] == "k3"  # a bound beats none
