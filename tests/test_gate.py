"""The promotion gate: paired intervals (checked against naive loops), the decision rules, and the
gate on a real MLflow registry (same weights twice, a champion moved mid-gate, a torn promote)."""

import itertools
import random
from dataclasses import replace

import numpy as np
import pytest

from ppg.config_ops import RegistryConfig
from ppg.gate import cluster_bootstrap, decide, paired_t_interval, sign_flip_interval


def naive_sign_flip_bounds(d, confidence, grid):
    """Every sign vector by itertools, every delta on a grid: the deltas no one-sided test rejects."""
    alpha, n, kept = (1 - confidence) / 2, len(d), []
    for delta in grid:
        x = [v - delta for v in d]
        obs = sum(x)
        flips = [sum(s * v for s, v in zip(signs, x)) for signs in itertools.product((1, -1), repeat=n)]
        above = sum(f >= obs - 1e-12 for f in flips) / len(flips)
        below = sum(f <= obs + 1e-12 for f in flips) / len(flips)
        if above > alpha and below > alpha:
            kept.append(delta)
    return min(kept), max(kept)


def test_sign_flip_interval_inverts_the_exact_test_as_a_naive_loop_does():
    d = [0.25, -0.125, 0.5, 0.375, 0.0, 0.625, 0.125, -0.25]
    step = 1 / 512
    lo, hi = sign_flip_interval(d, 0.95)
    nlo, nhi = naive_sign_flip_bounds(d, 0.95, np.arange(-1, 1.5, step))
    assert abs(lo - nlo) <= step and abs(hi - nhi) <= step
    assert lo < np.mean(d) < hi and lo < 0  # 8 noisy pairs: not enough to call it better


def test_sign_flip_needs_six_pairs_at_95_percent_and_is_zero_for_equal_models():
    assert sign_flip_interval([0.3] * 5) == (None, None)  # 1/32 > 0.025: no flip pattern can reject
    lo, hi = sign_flip_interval([0.3] * 6)
    assert lo == pytest.approx(0.3, abs=1e-9) and hi == pytest.approx(0.3, abs=1e-9)
    lo, hi = sign_flip_interval([0.0] * 8)
    assert abs(lo) < 1e-9 and abs(hi) < 1e-9


def test_paired_t_interval_matches_the_textbook_formula():
    from scipy import stats

    d = np.array([0.1, 0.3, -0.2, 0.4, 0.25, 0.05])
    lo, hi = paired_t_interval(d, 0.9)
    want = stats.t.interval(0.9, len(d) - 1, loc=d.mean(), scale=stats.sem(d))
    assert (lo, hi) == pytest.approx(want)


def online(values: dict, name="reward", coverage=None) -> dict:
    m = {name: {"mean": float(np.mean(list(values.values()))), "per_unit": values}}
    if coverage is not None:
        m["coverage"] = {"mean": float(np.mean(list(coverage.values()))), "per_unit": coverage}
    m.setdefault("consistency", {"mean": 1.0})
    return {"online": m}


def cfg(**kw):
    return RegistryConfig(**{"thresholds": {}, "non_inferiority": {}, "min_pairs": 6, **kw})


def test_a_better_challenger_is_promoted_a_worse_or_equal_one_blocked():
    rng = random.Random(0)
    champ = {f"p{i}": rng.random() * 0.5 for i in range(12)}
    better = {k: v + 0.3 + rng.uniform(-0.05, 0.05) for k, v in champ.items()}
    worse = {k: v - 0.2 for k, v in champ.items()}
    d = decide("online.reward", online(better), online(champ), None, None, cfg())
    assert d["promoted"] and d["difference"]["n"] == 12 and d["difference"]["method"] == "sign_flip"
    assert 0.25 < d["difference"]["lo"] < d["difference"]["mean"] < d["difference"]["hi"] < 0.35
    assert "interval [+0.30" in d["reason"] and "over 12 paired personas" in d["reason"]
    d = decide("online.reward", online(worse), online(champ), None, None, cfg())
    assert not d["promoted"] and d["difference"]["mean"] == pytest.approx(-0.2)
    d = decide("online.reward", online(champ), online(champ), None, None, cfg())
    assert not d["promoted"] and d["difference"]["mean"] == 0 and "not above registry.margin = 0" in d["reason"]
    d = decide("online.reward", online(better), online(champ), None, None, cfg(margin=0.4))
    assert not d["promoted"]  # a margin larger than the whole interval
    d = decide("online.reward", online(better), online(champ), None, None, cfg(min_pairs=16))
    assert not d["promoted"] and "fewer than registry.min_pairs = 16" in d["reason"]
    d = decide("online.reward", online(better), None, None, None, cfg(thresholds={"online.reward": 0.2}))
    assert d["promoted"] and d["difference"] is None and "no champion yet" in d["reason"]
    d = decide("online.reward", online(worse), None, None, None, cfg(thresholds={"online.reward": 0.9}))
    assert not d["promoted"] and "below the thresholds: online.reward" in d["reason"]


def test_a_secondary_metric_that_may_have_got_worse_blocks_promotion():
    champ = {f"p{i}": 0.2 + 0.01 * i for i in range(10)}
    better = {k: v + 0.3 for k, v in champ.items()}
    cov, lost = {k: 0.9 for k in champ}, {k: 0.5 for k in champ}
    d = decide("online.reward", online(better, coverage=lost), online(champ, coverage=cov), None, None,
               cfg(non_inferiority={"online.coverage": 0.05}))
    assert not d["promoted"] and "online.coverage improvement -0.4000" in d["reason"]
    d = decide("online.reward", online(better, coverage=cov), online(champ, coverage=cov), None, None,
               cfg(non_inferiority={"online.coverage": 0.05}))
    assert d["promoted"] and d["secondary"]["online.coverage"]["mean"] == 0


def turns(groups: int, good: bool, seed: int) -> list[dict]:
    """Scored logged turns: a good model ranks consistent turns above contradicting ones and gives
    them a lower weighted NLL."""
    rng, out = random.Random(seed), []
    for g in range(groups):
        for i in range(10):
            r = float(i % 2)
            score = (r + rng.gauss(0, 0.3)) if good else rng.gauss(0, 1)
            out.append({"key": f"{g}:{i}", "group": g, "reward": r, "score": score,
                        "nll_term": (1.0 if good else 2.0) + rng.gauss(0, 0.1)})
    return out


def test_offline_metrics_use_a_cluster_bootstrap_in_the_metrics_better_direction():
    good, bad = turns(10, True, 1), turns(10, False, 2)
    auc = cluster_bootstrap("offline.auc", good, bad, 0.95, 500)
    assert auc["method"] == "cluster_bootstrap" and auc["n"] == 10 and auc["lo"] > 0.2
    nll = cluster_bootstrap("offline.weighted_nll", good, bad, 0.95, 500)
    assert nll["mean"] == pytest.approx(1.0, abs=0.1) and nll["lo"] > 0.8  # lower NLL = an improvement
    m = {"offline": {"auc": {"mean": 0.9}, "weighted_nll": {"mean": 1.0}}}
    d = decide("offline.weighted_nll", m, m, good, bad, cfg())
    assert d["promoted"] and d["difference"]["mean"] > 0
    d = decide("offline.weighted_nll", m, m, bad, good, cfg())
    assert not d["promoted"] and d["difference"]["mean"] < 0


# --- the gate on a real registry -------------------------------------------------------------

@pytest.fixture
def registry_params(tmp_path, tiny_model):
    from ppg.config import EvalConfig, MlflowConfig, ModelConfig, Params, SimConfig

    p = Params(model=ModelConfig(spec="tiny", base=""), sim=SimConfig(domain="chatting"),
               eval=EvalConfig(personas=8, turns=3, qa=False,
                               generation={"max_new_tokens": 4, "temperature": 1.0, "top_p": 1.0, "batch_size": 8}),
               mlflow=MlflowConfig(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db", artifacts=str(tmp_path / "art")))
    return replace(p, registry=replace(p.registry, thresholds={}, non_inferiority={}, min_pairs=6, seed=7))


def register_tiny(p, tiny_model, name, times):
    """`times` registered versions of the same tiny weights."""
    from transformers import AutoModelForCausalLM

    from ppg.models import load_tokenizer
    from ppg.registry import fluent, tracking

    model, tok = AutoModelForCausalLM.from_pretrained(tiny_model), load_tokenizer(tiny_model)
    exp = tracking.experiment_id(tracking.client(p.mlflow), p.mlflow)  # artifacts under tmp_path, not ./mlruns
    with fluent(p) as mlflow:
        for _ in range(times):
            with mlflow.start_run(experiment_id=exp):
                mlflow.transformers.log_model({"model": model, "tokenizer": tok}, name="model",
                                              task="text-generation", registered_model_name=name,
                                              pip_requirements=["torch"])


def test_the_same_weights_registered_twice_are_not_promoted(registry_params, tiny_model):
    from ppg.registry import alias_version, gate, promote, tracking

    p = registry_params
    register_tiny(p, tiny_model, "ppg-chatting", 2)
    promote(p, "ppg-chatting", "1")
    said = []
    d = gate(p, "ppg-chatting", "2", "greedy", say=said.append)
    assert not d["promoted"] and d["difference"]["mean"] == 0 and d["difference"]["n"] == 8
    assert d["test_seed"] == 7 and "not above registry.margin" in d["reason"] and said[-1].startswith("NOT PROMOTED")
    assert alias_version(tracking.client(p.mlflow), "ppg-chatting", "champion") == "1"


def test_a_champion_moved_during_the_gate_is_not_overwritten(registry_params, tiny_model, monkeypatch):
    from ppg import registry

    p = registry_params
    register_tiny(p, tiny_model, "ppg-chatting", 3)
    registry.promote(p, "ppg-chatting", "1")
    real, calls = registry.measure, []

    def measure_then_someone_promotes_v3(*a, **kw):
        calls.append(1)
        if len(calls) == 2:  # another workspace's gate wrote between our read and our write
            registry.promote(p, "ppg-chatting", "3", "elsewhere")
        return real(*a, **kw)

    monkeypatch.setattr(registry, "measure", measure_then_someone_promotes_v3)
    p = replace(p, registry=replace(p.registry, margin=-1.0))  # v2 would pass on its own
    d = registry.gate(p, "ppg-chatting", "2", "greedy", say=lambda *_: None)
    assert not d["promoted"] and "the champion moved during the gate (v1 -> v3)" in d["reason"]
    assert registry.alias_version(registry.tracking.client(p.mlflow), "ppg-chatting", "champion") == "3"


def test_rollback_tolerates_a_promote_torn_between_its_two_writes(registry_params, tiny_model):
    from ppg import registry

    p = registry_params
    register_tiny(p, tiny_model, "ppg-chatting", 2)
    registry.promote(p, "ppg-chatting", "1")
    c = registry.tracking.client(p.mlflow)
    c.set_registered_model_alias("ppg-chatting", "champion", "2")  # the crash: alias moved, history not
    assert registry.champion_history(c, "ppg-chatting") == ["1", "2"]
    assert registry.rollback(p, "ppg-chatting") == "1"
    assert registry.alias_version(c, "ppg-chatting", "champion") == "1"
    with pytest.raises(ValueError, match="no earlier champion"):
        registry.rollback(p, "ppg-chatting")


def test_with_a_prefect_server_the_gate_mutex_is_its_global_concurrency_limit(registry_params, prefect_api):
    """Two holders of one model's mutex (as two workspaces on one server would be): the second
    waits, and gives up after pipeline.lock_timeout while the first holds it."""
    import threading

    from ppg.registry import gate_mutex

    p = replace(registry_params, pipeline=replace(registry_params.pipeline, lock_timeout=2))
    held, release = threading.Event(), threading.Event()

    def holder():
        with gate_mutex(p, "ppg-chatting", say=lambda *_: None) as what:
            assert what == "Prefect concurrency limit ppg-gate-ppg-chatting"
            held.set()
            release.wait(30)

    t = threading.Thread(target=holder)
    t.start()
    assert held.wait(60)
    with pytest.raises(TimeoutError):
        with gate_mutex(p, "ppg-chatting", say=lambda *_: None):
            pass
    with gate_mutex(p, "ppg-other", say=lambda *_: None):  # another model is not blocked
        pass
    release.set()
    t.join(30)
    with gate_mutex(p, "ppg-chatting", say=lambda *_: None):  # released: free again
        pass


def test_an_unknown_score_is_never_promoted_and_a_thin_secondary_blocks():
    champ = {f"p{i}": 0.2 for i in range(10)}
    nan = {"online": {"reward": {"mean": float("nan"), "per_unit": {}}, "consistency": {"mean": 1.0}}}
    d = decide("online.reward", nan, None, None, None, cfg())
    assert not d["promoted"] and "unavailable" in d["reason"]  # a NaN mean is no score, not a pass
    better = {k: 0.6 for k in champ}
    thin = {k: 0.9 for k in list(champ)[:3]}  # coverage measured on 3 personas only
    d = decide("online.reward", online(better, coverage=thin), online(champ, coverage=thin), None, None,
               cfg(non_inferiority={"online.coverage": 0.05}))
    assert not d["promoted"] and "too few pairs to bound its loss" in d["reason"]


def test_a_fixed_gate_seed_may_not_be_the_validation_seed():
    from ppg.config import Params

    with pytest.raises(ValueError, match="registry.seed: 1000 is eval.seed"):
        Params.from_dict({"registry": {"seed": 1000}}, "params.yaml")
    assert Params.from_dict({"registry": {"seed": 7}}, "params.yaml").registry.seed == 7


def test_run_links_point_at_the_tracking_server_in_use(monkeypatch):
    from ppg.config import MlflowConfig
    from ppg.tracking import ui_url

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert ui_url(MlflowConfig()) == "http://127.0.0.1:5000"  # the embedded store: an `mlflow ui`
    assert ui_url(MlflowConfig(tracking_uri="https://mlflow.team.example/")) == "https://mlflow.team.example"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://10.0.0.5:5001")
    assert ui_url(MlflowConfig(ui_url="http://127.0.0.1:5000")) == "http://10.0.0.5:5001"


def test_an_experiment_another_workspace_created_first_is_used(tmp_path):
    """Two workspaces on one server both find no experiment and both create it: the one that
    loses the race reads the winner's id instead of failing its run."""
    from ppg.config import MlflowConfig
    from ppg.tracking import client, experiment_id

    cfg = MlflowConfig(tracking_uri=f"sqlite:///{tmp_path}/m.db", artifacts=str(tmp_path / "a"))
    c = client(cfg)
    winner = c.create_experiment(cfg.experiment)

    class Late:  # its first lookup ran before the winner's create
        tracking_uri, seen = c.tracking_uri, 0

        def get_experiment_by_name(self, name):
            self.seen += 1
            return None if self.seen == 1 else c.get_experiment_by_name(name)

        def create_experiment(self, *a, **k):
            return c.create_experiment(*a, **k)

    assert experiment_id(Late(), cfg) == winner


def test_a_version_registered_but_never_gated_is_completed_not_logged_again(registry_params, tiny_model, tmp_path):
    """A pipeline run that died between registration and the gate's verdict (the tracking server
    went away) leaves a version without ppg.gate; the next run's registration of the same
    training run completes that version instead of logging the weights a second time."""
    import json

    from dataclasses import replace

    from ppg.registry import CHALLENGER, register, tracking, versions_of_run

    p = replace(registry_params, train=replace(registry_params.train, out=str(tmp_path / "models")),
                eval=replace(registry_params.eval, out=str(tmp_path / "eval")))
    register_tiny(p, tiny_model, "ppg-chatting", 1)
    c = tracking.client(p.mlflow)
    run_id = c.get_model_version("ppg-chatting", "1").run_id
    assert versions_of_run(c, "ppg-chatting", run_id) == (None, "1")
    (tmp_path / "models/greedy").mkdir(parents=True)
    (tmp_path / "models/greedy/run.json").write_text(json.dumps({"mlflow_run_id": run_id}))
    (tmp_path / "eval/greedy").mkdir(parents=True)
    (tmp_path / "eval/greedy/metrics.json").write_text(json.dumps({"online": {"domain": "chatting",
                                                                             "reward": {"mean": 0.5}}}))
    ungated = versions_of_run(c, "ppg-chatting", run_id)[1]  # what the pipeline looked up before registering
    assert register(p, "greedy", ungated=ungated) == ("ppg-chatting", "1")  # no weights needed: not logged again
    assert len(c.search_model_versions("name = 'ppg-chatting'")) == 1
    v = c.get_model_version("ppg-chatting", "1")
    assert v.tags["ppg.policy"] == "greedy" and v.tags["ppg.run_id"] == run_id
    assert str(c.get_model_version_by_alias("ppg-chatting", CHALLENGER).version) == "1"
    c.set_model_version_tag("ppg-chatting", "1", "ppg.gate", "blocked: test")
    assert versions_of_run(c, "ppg-chatting", run_id) == ("1", None)
    assert versions_of_run(c, "ppg-other", run_id) == (None, None)
