import json
import random
from itertools import product
from pathlib import Path

import pytest

from ppg.config import SimConfig
from ppg.stats import auc, wilson
from ppg.evaluate.offline import offline_metrics
from ppg.evaluate.online import online_metrics
from ppg.sim.simulate import simulate

from judge_server import FlakyJudge


def naive_auc(scores, labels):
    pos = [s for s, y in zip(scores, labels) if y]
    neg = [s for s, y in zip(scores, labels) if not y]
    return sum(1.0 if p > n else 0.5 if p == n else 0.0 for p, n in product(pos, neg)) / (len(pos) * len(neg))


def test_auc_on_known_answers_and_against_the_pairwise_definition():
    assert auc([3, 4, 5, 0, 1], [1, 1, 1, 0, 0]) == 1.0
    assert auc([0, 1, 5, 6], [1, 1, 0, 0]) == 0.0
    assert auc([2, 2, 2, 2], [1, 0, 1, 0]) == 0.5
    rng = random.Random(0)
    for _ in range(100):
        n = rng.randint(2, 40)
        s = [rng.choice([0.0, 0.5, 1.0, rng.random()]) for _ in range(n)]
        y = [rng.random() < 0.5 for _ in range(n)]
        if 0 < sum(y) < n:
            assert auc(s, y) == pytest.approx(naive_auc(s, y))


def test_offline_auc_is_refused_with_too_few_contradictions():
    turns = [{"group": i % 3, "reward": 1.0, "score": i, "nll_term": 0.5} for i in range(30)]
    turns += [{"group": 0, "reward": 0.0, "score": -1, "nll_term": 0.5}] * 3
    m = offline_metrics(turns, min_contradictions=5)
    assert m["auc"] == {"refused": True, "reason": "refused (n = 3 contradicting turns, need 5)"}
    m = offline_metrics(turns, min_contradictions=3)
    assert m["auc"]["mean"] == 1.0 and m["auc"]["groups"] == 3
    assert m["weighted_nll"]["mean"] == pytest.approx(0.5)


def test_wilson_interval():
    lo, hi = wilson(8, 10)
    assert lo == pytest.approx(0.4902, abs=1e-4) and hi == pytest.approx(0.9433, abs=1e-4)
    assert wilson(0, 5)[0] == pytest.approx(0.0, abs=1e-12) and wilson(5, 5)[1] == pytest.approx(1.0)


def test_online_metrics_of_the_behaviour_policy():
    ds = simulate("therapy", 40, 6, 0, SimConfig())
    m = online_metrics(ds)
    assert m["dialogues"] == 40 and [x["turn"] for x in m["drift"]] == list(range(6))
    assert all(x["lo"] <= x["mean"] <= x["hi"] for x in m["drift"])
    per_turn = sum(x["mean"] * x["n"] for x in m["drift"]) / sum(x["n"] for x in m["drift"])
    assert m["consistency"]["mean"] == pytest.approx(per_turn)  # equal turns per dialogue


def test_engagement_and_a_drift_curve_from_a_judge_without_line_to_line_verdicts():
    from ppg.data.schema import Dialogue

    def d(i, replies):  # the reward model's shape: persona verdicts, commitment unknown
        lines = []
        for text, fits in replies:
            lines += [{"speaker": "partner", "text": "And then?"},
                      {"speaker": "me", "text": text, "reward": 0.5, "judge": {"persona": fits, "commitment": None}}]
        return Dialogue.model_validate({"dialogue_id": f"d{i}", "domain": "therapy", "source": "t",
                                        "personas": {"me": "p", "partner": ""}, "evaluated_speakers": ["me"],
                                        "lines": lines})

    six = "one two three four five six"
    m = online_metrics([d(0, [(six, 1), ("no", 0)]), d(1, [(six + " " + six, 1), (six, 1)])], engagement_words=12)
    assert m["engagement"]["mean"] == pytest.approx(((0.5 + 1 / 12) / 2 + (1.0 + 0.5) / 2) / 2)
    assert m["consistency"]["n"] == 0 and m["drift_of"] == "persona"  # unknown consistency, not 0
    assert [(x["turn"], x["mean"], x["n"]) for x in m["drift"]] == [(0, 1.0, 2), (1, 0.5, 2)]


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_model):
    from ppg.config import BuildConfig, LoraConfig, MlflowConfig, ModelConfig, Params, TrainConfig
    from ppg.data.build import build_dataset
    from ppg.data.schema import write_dialogues
    from ppg.train.offline import train

    tmp = tmp_path_factory.mktemp("eval")
    write_dialogues(tmp / "imported/dialogues.jsonl", simulate("therapy", 24, 4, 0, SimConfig()))
    build_dataset(tmp / "imported", tmp / "built", tiny_model, "tiny", ["k2"], {"length": 2},
                  BuildConfig(max_length=512, splits={"train": 0.7, "test": 0.3}, folds=2))
    p = Params(model=ModelConfig(spec="tiny", base=""),
               train=TrainConfig(data=str(tmp / "built"), out=str(tmp / "models"), workdir=str(tmp / "work"),
                                 batch_size=2, max_steps=2, lora=LoraConfig(enabled=True, r=4)),
               mlflow=MlflowConfig(tracking_uri=f"sqlite:///{tmp}/mlflow.db", artifacts=str(tmp / "artifacts")))
    train(p, "k2", progress=False)
    train(p, "k2", fold=1, progress=False)
    p.eval.out, p.eval.personas, p.eval.turns, p.eval.min_contradictions = str(tmp / "eval"), 3, 3, 1
    p.eval.split = "test"  # this fixture builds train and test only
    p.eval.generation = {"max_new_tokens": 6, "temperature": 0.7, "top_p": 0.9, "batch_size": 4}
    return p, tmp


def test_evaluate_writes_metrics_plot_and_table(trained):
    from ppg.evaluate.run import evaluate

    p, tmp = trained
    p.eval.mode = "both"
    m = evaluate(p, "k2")
    saved = json.loads((tmp / "eval/k2/metrics.json").read_text())
    assert saved["online"]["dialogues"] == 3 and len(saved["online"]["drift"]) == 3
    assert 0 <= saved["online"]["consistency"]["mean"] <= 1 and "qa" in saved["online"]
    assert saved["offline"]["turns"] > 0 and ("mean" in saved["offline"]["auc"] or saved["offline"]["auc"]["refused"])
    assert (tmp / "eval/k2/drift.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "| k2 |" in (tmp / "eval/k2/table.md").read_text()
    assert m["mlflow_run_id"] == json.loads((tmp / "models/k2/run.json").read_text())["mlflow_run_id"]
    assert len((tmp / "eval/k2/dialogues.jsonl").read_text().splitlines()) == 3
    # logged into the policy's training run: metrics by split, the drift curve by turn, the files
    from mlflow import MlflowClient

    c = MlflowClient(p.mlflow.tracking_uri)
    run = c.get_run(m["mlflow_run_id"])
    assert run.data.metrics["test.online.consistency"] == pytest.approx(saved["online"]["consistency"]["mean"])
    assert [x.step for x in c.get_metric_history(run.info.run_id, "test.drift")] == [0, 1, 2]
    assert {f.path for f in c.list_artifacts(run.info.run_id, "eval-test")} >= {"eval-test/metrics.json",
                                                                                "eval-test/drift.png"}


def test_evaluate_a_fold_uses_the_model_trained_without_it(trained):
    from ppg.evaluate.run import evaluate

    p, tmp = trained
    p.eval.mode = "offline"
    m = evaluate(p, "k2", fold=1)
    assert m["offline"]["fold"] == 1 and (tmp / "eval/k2-fold1/metrics.json").exists()
    with pytest.raises(FileNotFoundError, match="no trained model"):
        evaluate(p, "k2", fold=0)


def test_batched_scoring_gives_the_scores_of_one_window_at_a_time(trained):
    """offline_turns in batches of similar length (right padding, head at targets) against the
    plain loop: one window per forward pass over the full logits, adapters off for the reference."""
    import pyarrow.parquet as pq

    from ppg.evaluate.offline import offline_turns
    from ppg.evaluate.run import load_trained
    from ppg.reference import naive_turn_scores

    p, tmp = trained
    rows = pq.read_table(tmp / "built" / "train.parquet").to_pylist()
    model, ref, tok, lora = load_trained(p, "k2")
    assert lora and len({len(r["input_ids"]) for r in rows}) > 3  # windows of several lengths
    naive = naive_turn_scores(model, rows, "k2")
    cache = {}
    batched = offline_turns(model, ref, lora, tok, rows, "k2", ref_cache=cache, batch_size=5)
    assert [t["score"] for t in batched] == pytest.approx(naive, abs=1e-4) and len(cache) == len(rows)
    again = offline_turns(model, ref, lora, tok, rows, "k2", ref_cache=cache, batch_size=3)  # reference cached
    assert [t["score"] for t in again] == pytest.approx(naive, abs=1e-4)
    assert max(abs(a) for a in naive) > 1e-3  # the adapters changed the scores: not a trivial zero


def test_mean_ci_is_student_t_and_rates_stay_in_bounds():
    from ppg.stats import mean_ci

    x = [1.0, 1.0, 1.0, 0.5]  # mean 0.875, sd 0.25, n 4: t(0.975, 3) = 3.182446
    ci = mean_ci(x)
    assert ci["mean"] == pytest.approx(0.875)
    assert ci["hi"] - ci["mean"] == pytest.approx(3.182446 * 0.25 / 2, abs=1e-6)
    bounded = mean_ci(x, (0.0, 1.0))
    assert bounded["hi"] == 1.0 and bounded["lo"] == pytest.approx(ci["lo"])
    assert mean_ci([0.3])["n"] == 1 and mean_ci([0.3])["lo"] != mean_ci([0.3])["lo"]  # NaN: no spread from one unit


SECRET = "sk-eval-DO-NOT-LEAK-0987654321"


def test_llm_judge_in_evaluation_and_a_judge_that_dies_mid_run(trained, monkeypatch, capsys, caplog, tmp_path):
    import dataclasses

    from mlflow import MlflowClient

    from ppg.evaluate.run import evaluate
    from ppg.judges.llm import JudgeError

    p, tmp = trained
    monkeypatch.setenv("PPG_JUDGE_API_KEY", SECRET)
    up = FlakyJudge(healthy=10 ** 6)
    cfg = dict(base_url=up.url, model="judge", retries=1, backoff_s=0.01, timeout_s=5,
               cache=str(tmp_path / "verdicts.sqlite"))
    good = dataclasses.replace(p, eval=dataclasses.replace(p.eval, mode="online", split="validation",
                                                           out=str(tmp_path / "ok"), llm_judge=True),
                               judge=dataclasses.replace(p.judge, **cfg))
    m = evaluate(good, "k2")
    llm = m["online"]["llm"]
    assert llm["consistency"]["mean"] == 1.0 and llm["unknown_share"]["mean"] == 0.0  # every answer was NO / []
    assert llm["counts"]["requests"] == up.state["n"] > 0 and set(up.state["auth"]) == {f"Bearer {SECRET}"}
    run_id = m["mlflow_run_id"]
    c = MlflowClient(p.mlflow.tracking_uri)
    assert c.get_run(run_id).data.metrics["validation.online.llm.consistency"] == 1.0
    # the endpoint dies mid-evaluation: retried, then the evaluation fails with nothing written
    # and nothing logged for that split
    down = FlakyJudge(healthy=3)
    bad = dataclasses.replace(good, eval=dataclasses.replace(good.eval, split="test", out=str(tmp_path / "down")),
                              judge=dataclasses.replace(good.judge, base_url=down.url))
    before = c.get_run(run_id).data.metrics
    with pytest.raises(JudgeError, match="attempts"):
        evaluate(bad, "k2")
    assert down.state["n"] > 3 and not (tmp_path / "down").exists()
    assert c.get_run(run_id).data.metrics == before
    # the key is in no log, MLflow param, tag or artifact, and in no evaluation output
    logs = capsys.readouterr()
    assert SECRET not in logs.out + logs.err + caplog.text
    run = c.get_run(run_id)
    assert SECRET not in json.dumps(run.data.params) + json.dumps(run.data.tags)
    stores = [Path(p.mlflow.tracking_uri[len("sqlite:///"):]), Path(p.mlflow.artifacts), tmp_path / "ok"]
    for f in [f for s in stores for f in ([s] if s.is_file() else s.rglob("*")) if f.is_file()]:
        assert SECRET.encode() not in f.read_bytes(), f


def test_scoring_runs_on_the_gpu_training_used_unless_ds_accelerator_says_cpu(monkeypatch):
    import torch

    from ppg.models import eval_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.delenv("DS_ACCELERATOR", raising=False)
    assert eval_device() == torch.device("cuda")
    monkeypatch.setenv("DS_ACCELERATOR", "cpu")
    assert eval_device() == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.delenv("DS_ACCELERATOR")
    assert eval_device() == torch.device("cpu")
