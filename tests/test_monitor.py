"""ppg monitor: each model version scored against its own baseline under the same judge, a rule
that fires on an interval bound, drifted logs handed to training, retention (bad log records:
tests/test_monitor_logs.py)."""

import dataclasses
import random

import pytest

from ppg.config import DataConfig, JudgeConfig, MlflowConfig, MonitorConfig, Params
from ppg.data.schema import Dialogue, read_dialogues, write_dialogues


def served(n: int, seed: int, version: str = "ppg-chatting/1", bad_share: float = 0.0) -> list[Dialogue]:
    """Logged dialogues of a deployed model, with verdicts; bad_share of the turns contradict."""
    rng = random.Random(seed)
    return [Dialogue.model_validate({
        "dialogue_id": f"served-{seed}-{i}", "domain": "chatting", "source": "served",
        "meta": {"model_version": version},
        "personas": {"bot": f"I am bot {seed}-{i}, a baker from Leeds.", "user": ""}, "evaluated_speakers": ["bot"],
        "lines": [x for t in range(4) for x in (
            {"speaker": "user", "text": f"question {t} for {i}"},
            {"speaker": "bot", "text": f"answer {t} from {i}", "reward": 0.0 if rng.random() < bad_share else 1.0})]})
        for i in range(n)]


def register(p, tmp_path, name="ppg-chatting", versions=2):
    """The registered versions the logs name (the monitor scores only those)."""
    from mlflow import MlflowClient

    c = MlflowClient(p.mlflow.tracking_uri)
    c.create_registered_model(name)
    for _ in range(versions):
        c.create_model_version(name, source=str(tmp_path / "weights"))
    return p


@pytest.fixture
def p(tmp_path):
    incoming = tmp_path / "incoming"
    return register(Params(data=DataConfig(source=f"jsonl:{incoming}"), judge=JudgeConfig(),
                  monitor=MonitorConfig(incoming=str(incoming), state=str(tmp_path / "state"), min_turns=40,
                                        keep_batches=1),
                  mlflow=MlflowConfig(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db", artifacts=str(tmp_path / "a"))),
                    tmp_path)


def test_good_logs_set_the_baseline_and_drifted_ones_fire_and_become_training_data(p, tmp_path):
    from mlflow import MlflowClient

    from ppg.monitor import check

    logs = tmp_path / "logs"
    write_dialogues(logs / "a.jsonl", served(20, 0, bad_share=0.05))
    r = check(p, logs)
    v = r["versions"]["ppg-chatting/1"]
    assert v["fires"] is False and v["baseline"] is None and v["score"]["turns"] == 80 and not r["fired"]
    assert not (tmp_path / "incoming").exists()
    assert check(p, logs)["files"] == []  # nothing new: nothing judged again
    # a second version starts its own baseline; version 1's new logs drift below its baseline
    write_dialogues(logs / "b.jsonl", served(20, 1, bad_share=0.5) + served(20, 2, "ppg-chatting/2", 0.05))
    r = check(p, logs)
    one, two = r["versions"]["ppg-chatting/1"], r["versions"]["ppg-chatting/2"]
    assert one["fires"] and "below the baseline" in one["why"] and one["baseline"]["mean"] > 0.9
    assert two["fires"] is False and two["baseline"] is None
    moved = read_dialogues(r["incoming"])  # the judged logs are training data now
    assert len(moved) == 40 and r["incoming"].startswith(str(tmp_path / "incoming"))
    assert len(list((tmp_path / "state" / "batches").glob("*.jsonl"))) == 1  # retention: keep_batches = 1
    c = MlflowClient(p.mlflow.tracking_uri)
    runs = c.search_runs([c.get_experiment_by_name("ppg").experiment_id], "tags.`ppg.stage` = 'monitor'")
    assert sorted((x.data.tags["ppg.version"], x.data.metrics["monitor.fired"]) for x in runs) == [
        ("1", 0.0), ("1", 1.0), ("2", 0.0)]


def test_the_rule_waits_for_enough_turns_and_fires_on_the_bound_not_the_mean(p, tmp_path):
    from ppg.monitor import decide

    cfg = dataclasses.replace(p.monitor, min_consistency=0.5, max_drop=0.1)
    s = {"mean": 0.45, "lo": 0.30, "hi": 0.60, "n": 30, "turns": 120}  # mean below, interval not
    assert decide(s, None, cfg)[0] is False
    assert decide({**s, "hi": 0.49}, None, cfg)[0] is True
    assert decide({**s, "turns": 39}, None, cfg)[0] is None
    assert decide({**s, "mean": 0.8, "hi": 0.85}, {"mean": 0.97}, cfg)[0] is True  # 0.97 - 0.85 > 0.1
    assert decide({**s, "mean": 0.8, "hi": 0.9}, {"mean": 0.97}, cfg)[0] is False


def test_the_monitor_refuses_an_incoming_folder_training_never_reads(p, tmp_path):
    from ppg.monitor import check

    elsewhere = dataclasses.replace(p, data=DataConfig(source="simulator"))
    with pytest.raises(ValueError, match="does not read"):
        check(elsewhere, tmp_path)


def test_a_served_conversation_logged_per_request_is_counted_once():
    """The chat model logs each request with its conversation so far: of the records of one
    conversation only the longest is kept; a conversation that only starts alike (the same
    persona and first message, then another reply) is a conversation of its own."""
    from ppg.monitor import whole_conversations

    def record(i, lines, conv="c1", version="ppg-chatting/1"):
        return Dialogue.model_validate({
            "dialogue_id": f"served-{i}", "domain": "chatting", "source": "ppg-serve-model",
            "meta": {"model_version": version, "conversation": conv}, "personas": {"assistant": "I am Ana."},
            "evaluated_speakers": ["assistant"],
            "lines": [{"speaker": s, "text": t, "reward": None} for s, t in lines]})

    hi = [("user", "hi"), ("assistant", "hello")]
    more = hi + [("user", "job?"), ("assistant", "nurse")]
    other = [("user", "hi"), ("assistant", "hey there")]
    ds = [record(0, hi), record(1, more), record(2, other), record(3, hi, version="ppg-chatting/2"),
          *served(1, seed=5)]
    kept = [d.dialogue_id for d in whole_conversations(ds)]
    assert kept == ["served-1", "served-2", "served-3", "served-5-0"]


def test_with_a_served_pipeline_deployment_retraining_is_a_flow_run_of_it(p, tmp_path, prefect_api):
    """The monitor's retraining asks the Prefect server to run the ppg-pipeline deployment (a worker
    or `ppg serve` then executes it), with the workspace as its parameter; nothing runs in process."""
    import logging

    from prefect import get_client
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId

    from flows.monitor import retrain
    from flows.pipeline import ppg_pipeline

    import asyncio

    async def runs_then_delete(dep_id):
        async with get_client() as c:
            got = await c.read_flow_runs(deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[dep_id])))
            for x in got:
                await c.delete_flow_run(x.id)
            await c.delete_deployment(dep_id)  # the session's server is shared: later flows run in process
            return got

    name = p.pipeline.deployment_name(tmp_path / "ws")  # this workspace's deployment, as `ppg deploy` names it
    dep_id = ppg_pipeline.to_deployment(name=name).apply()
    try:
        r = retrain(p, str(tmp_path / "ws"), logging.getLogger("test"))
    finally:
        got = asyncio.run(runs_then_delete(dep_id))
    assert r["deployment"] == f"ppg-pipeline/{name}" and "pipeline" not in r
    assert [str(x.id) for x in got] == [r["flow_run_id"]] and got[0].parameters == {"workspace": str(tmp_path / "ws")}
    assert got[0].state.is_scheduled()  # waiting for a worker: the monitor does not run it itself
