"""`ppg judge`: null rewards filled over real HTTP, logged ones kept, personal data redacted before
the judge sees it, every answer cached (a rerun asks nothing, a new file pays for its own lines, a
dead endpoint leaves no output and a cache the next run resumes from)."""

import dataclasses
import json

import pytest
from judge_server import FlakyJudge

from ppg.config import JudgeConfig, MlflowConfig, Params
from ppg.data.schema import Dialogue, read_dialogues, write_dialogues
from ppg.judges.llm import JudgeError
from ppg.judges.stage import judge_dataset, redact

SECRET = "sk-test-judge-stage-0987654321"


def dialogue(i: int, logged: float | None = None) -> Dialogue:
    return Dialogue.model_validate({
        "dialogue_id": f"log-{i}", "domain": "therapy", "source": "test",
        "personas": {"patient": f"I am Sam {i}, a bus driver. Call me on +44 7700 900{i:03d}.", "therapist": ""},
        "evaluated_speakers": ["patient"],
        "lines": [{"speaker": "therapist", "text": "How are you?"},
                  {"speaker": "patient", "text": f"Fine, write to sam{i}@example.org.", "reward": logged},
                  {"speaker": "therapist", "text": "And work?"},
                  {"speaker": "patient", "text": f"I drive route {i}."}]})


def params(tmp_path, url: str, **judge) -> Params:
    judge = {"kind": "llm", "base_url": url, "cache": str(tmp_path / "cache.sqlite"), "retries": 1, "backoff_s": 0.01,
             "timeout_s": 5, "concurrency": 2, **judge}
    return Params(judge=JudgeConfig(**judge),
                  mlflow=MlflowConfig(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db",
                                      artifacts=str(tmp_path / "artifacts")))


@pytest.fixture
def logs(tmp_path, monkeypatch):
    monkeypatch.setenv("PPG_JUDGE_API_KEY", SECRET)
    folder = tmp_path / "imported"
    write_dialogues(folder / "dialogues.jsonl", [dialogue(0, logged=0.0), dialogue(1)])
    return folder


def test_null_rewards_are_judged_logged_ones_kept_and_a_rerun_asks_nothing(tmp_path, logs):
    from mlflow import MlflowClient

    up = FlakyJudge(healthy=10 ** 6)  # every answer: "It fits. NO" / "Reasoning. []" -> reward 1
    p = params(tmp_path, up.url)
    s = judge_dataset(p, logs, tmp_path / "judged")
    # dialogue 0: its first turn is logged (0.0, kept), its second is asked both questions;
    # dialogue 1: the first turn gets prompt-to-line only (no history), the second both
    assert up.state["n"] == 2 + 3 and s["counts"]["requests"] == 5 and s["counts"]["cache_hits"] == 0
    assert s["counts"]["kept_turns"] == 1 and s["counts"]["judged_turns"] == 3 and s["null_rewards"] == 0
    assert s["counts"]["tokens_out"] == 15 and s["counts"]["tokens_in"] > 0  # the endpoint's usage
    out = read_dialogues(tmp_path / "judged" / "dialogues.jsonl")
    assert [[ln.reward for ln in d.turns("patient")] for d in out] == [[0.0, 1.0], [1.0, 1.0]]
    judged = out[1].turns("patient")[0].judge
    assert judged["persona"] == 1 and judged["by"]["kind"] == "llm" and judged["by"]["model"] == "judge"
    assert out[0].turns("patient")[0].judge is None  # the logged turn is left as it was
    # personal data never reached the judge, and is gone from what becomes training data
    seen = "".join(up.state["bodies"])
    assert "@example.org" not in seen and "7700" not in seen and "[email]" in seen and "[phone]" in seen
    assert "[email]" in out[1].lines[1].text and "[phone]" in out[1].personas["patient"]
    assert s["redacted"] == {"email": 2, "phone": 2}
    assert json.loads((tmp_path / "judged" / "summary.json").read_text())["counts"]["requests"] == 5
    run = MlflowClient(p.mlflow.tracking_uri).search_runs(
        [MlflowClient(p.mlflow.tracking_uri).get_experiment_by_name("ppg").experiment_id])[0]
    assert run.data.tags["ppg.stage"] == "judge" and run.data.metrics["requests"] == 5
    assert SECRET not in json.dumps(run.data.params) + json.dumps(run.data.tags) + json.dumps(s)

    again = judge_dataset(p, logs, tmp_path / "judged-again")
    assert up.state["n"] == 5 and again["counts"]["requests"] == 0 and again["counts"]["cache_hits"] == 5
    assert read_dialogues(tmp_path / "judged-again" / "dialogues.jsonl") == out
    # a new file pays only for its own lines
    write_dialogues(logs / "dialogues.jsonl", [dialogue(0, logged=0.0), dialogue(1), dialogue(2)])
    grown = judge_dataset(p, logs, tmp_path / "judged-grown")
    assert up.state["n"] == 5 + 3 and grown["counts"]["cache_hits"] == 5


def test_overwrite_judges_logged_turns_too(tmp_path, logs):
    up = FlakyJudge(healthy=10 ** 6)
    s = judge_dataset(params(tmp_path, up.url, overwrite=True), logs, tmp_path / "judged")
    assert s["counts"]["kept_turns"] == 0 and up.state["n"] == 3 + 3
    out = read_dialogues(tmp_path / "judged" / "dialogues.jsonl")
    assert out[0].turns("patient")[0].reward == 1.0  # the judge's verdict replaced the logged 0.0


def test_a_dead_endpoint_leaves_no_output_and_the_next_run_resumes_from_the_cache(tmp_path, logs):
    down = FlakyJudge(healthy=3)
    p = params(tmp_path, down.url, concurrency=1)
    with pytest.raises(JudgeError, match="attempts"):
        judge_dataset(p, logs, tmp_path / "judged")
    assert not (tmp_path / "judged").exists()
    up = FlakyJudge(healthy=10 ** 6)
    s = judge_dataset(dataclasses.replace(p, judge=dataclasses.replace(p.judge, base_url=up.url)), logs,
                      tmp_path / "judged")
    assert s["counts"]["cache_hits"] == 3 and up.state["n"] == 5 - 3  # only what was never answered


def test_the_labels_judge_keeps_every_logged_verdict_and_asks_nobody(tmp_path, logs):
    p = dataclasses.replace(params(tmp_path, "http://127.0.0.1:9/v1"), judge=JudgeConfig(cache=str(tmp_path / "c")))
    s = judge_dataset(p, logs, tmp_path / "judged")
    assert s["judge"] == {"kind": "labels"} and s["null_rewards"] == 3 and s["counts"] == {"turns": 4, "null": 3}
    assert not (tmp_path / "c").exists()


def test_redaction_patterns_are_the_configured_ones():
    d = dialogue(7)
    [out], counts = redact([d], {"route": r"route \d+"})
    assert out.lines[3].text == "I drive [route]." and counts == {"route": 1} and d.lines[3].text == "I drive route 7."
    with pytest.raises(ValueError, match="judge.redact.bad"):
        JudgeConfig(redact={"bad": "(unclosed"})


def test_answers_without_a_verdict_stay_null_and_the_validation_gate_decides(tmp_path, logs):
    """The CLI end to end against a judge that never says YES or NO: every judged reward is null
    (counted), and `ppg validate` then fails on the null share."""
    import yaml
    from typer.testing import CliRunner

    from ppg.cli import app
    from ppg.judges.serve import judge_server
    from ppg.models import resolve_model

    with judge_server(resolve_model("tiny"), device="cpu") as url:  # the real transport; answers are noise
        cfg = {"judge": {"kind": "llm", "base_url": url,
                         "cache": str(tmp_path / "cache.sqlite"), "max_tokens": 4, "concurrency": 1},
               "mlflow": {"tracking_uri": f"sqlite:///{tmp_path}/mlflow.db", "artifacts": str(tmp_path / "a")}}
        (tmp_path / "params.yaml").write_text(yaml.safe_dump(cfg))
        runner = CliRunner()
        res = runner.invoke(app, ["judge", str(logs), "--out", str(tmp_path / "judged"), "--params",
                                  str(tmp_path / "params.yaml"), "--no-progress"])
        assert res.exit_code == 0, res.output
    s = json.loads((tmp_path / "judged" / "summary.json").read_text())
    assert s["counts"]["requests"] == 5 and s["counts"]["judged_turns"] == 3
    out = read_dialogues(tmp_path / "judged" / "dialogues.jsonl")
    rewards = [ln.reward for d in out for ln in d.turns("patient")]
    assert rewards[0] == 0.0 and sum(r is None for r in rewards) == s["null_rewards"] >= 1  # never a guess
    assert s["counts"]["null_prompt_to_line"] >= 1
    res = runner.invoke(app, ["validate", str(tmp_path / "judged"), "--out", str(tmp_path / "v"), "--params",
                              str(tmp_path / "params.yaml")])
    assert res.exit_code == 1
    assert "## FAIL: share of evaluated turns without a verdict <= 0.1" in (tmp_path / "v" / "report.md").read_text()
