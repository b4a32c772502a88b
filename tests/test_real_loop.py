"""The loop on real data, end to end: logged dialogues WITHOUT rewards go through `ppg run`: the
judge stage (an LLM judge over real HTTP) gives every turn a reward, then validate, build, train
per policy, online evaluation of real held-out personas against a partner model, registration and
the gate. Then a reward model trained on those verdicts becomes the judge of the next run, whose
challenger the gate compares with the champion on the same test personas. The tiny model
throughout: this checks the machinery, not a result."""

import random
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from judge_server import FlakyJudge
from test_pipeline import BIN, ROOT, SECRET, env, registry_state, set_params  # noqa: F401  (env is a fixture)

from ppg.data.schema import read_dialogues

JOBS = ["nurse", "baker", "pilot", "teacher", "welder", "chemist", "farmer", "courier"]
WORRIES = ["sleep", "money", "my sister", "work", "moving house", "my health", "exams", "loneliness"]
ASKS = ["What has been on your mind", "How did the week go", "What felt hardest", "What helped, if anything",
        "How are you sleeping", "Who did you talk to"]


def unlabeled_logs(n: int, seed: int = 0) -> list[dict]:
    """Therapy sessions as a deployment logs them: personas and lines, no verdicts (reward null)."""
    rng, out = random.Random(seed), []
    for i in range(n):
        job, worry = rng.choice(JOBS), rng.choice(WORRIES)
        lines = []
        for t in range(3):
            lines += [{"speaker": "therapist", "text": f"{rng.choice(ASKS)} since session {t + 1}, client {i}?"},
                      {"speaker": "patient", "text": f"As a {job} ({i}-{t}) I keep coming back to {worry}.",
                       "reward": None}]
        out.append({"dialogue_id": f"log-{i:03d}", "domain": "therapy", "source": "deployment",
                    "personas": {"patient": f"I am client {i}, a {job} who worries about {worry}.", "therapist": ""},
                    "evaluated_speakers": ["patient"], "lines": lines})
    return out


@pytest.mark.slow
def test_unlabeled_logs_through_the_pipeline_with_an_llm_judge_then_a_reward_model(tmp_path, env,  # noqa: F811
                                                                                   prefect_api):
    import json

    from flows.pipeline import ppg_pipeline
    from ppg.overlay import apply_overlay

    judge = FlakyJudge(healthy=10 ** 9, contradicts="money")  # money worries contradict the persona
    ws = tmp_path / "ws"
    for rel in ("dvc.yaml", "params.yaml", "params.tiny.yaml", ".dvcignore", "ppg"):
        src, dst = ROOT / rel, ws / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        (shutil.copytree(src, dst, ignore=shutil.ignore_patterns("__pycache__")) if src.is_dir()
         else shutil.copy(src, dst))
    for cmd in (["git", "init", "-q"], ["dvc", "init", "-q"]):
        subprocess.run(cmd, cwd=ws, env=env, check=True)
    shutil.copy(ROOT / ".dvc/config", ws / ".dvc/config")
    apply_overlay(ws / "params.yaml", ws / "params.tiny.yaml")
    (ws / "data/incoming").mkdir(parents=True)
    (ws / "data/incoming/logs.jsonl").write_text("".join(json.dumps(d) + "\n" for d in unlabeled_logs(60)))
    set_params(ws, data={"source": "jsonl:data/incoming"},
               judge={"kind": "llm", "base_url": judge.url, "retries": 1, "backoff_s": 0.01, "timeout_s": 10},
               returns={"policies": ["greedy", "k2"]},
               train={"max_steps": 6, "batch_size": 4, "checkpoint_every": 6},
               # the LLM judge gives the training rewards; another model of the endpoint grades the rollouts
               eval={"partner": "llm", "partner_model": "tiny", "personas": 3, "turns": 2, "qa": False,
                     "judge": {"kind": "llm", "model": "grader"},
                     "generation": {"max_new_tokens": 6, "temperature": 0.0, "top_p": 1.0, "batch_size": 4}},
               registry={"thresholds": {"online.reward": 0.0}, "non_inferiority": {}, "personas": 3,
                         "min_pairs": 2, "require_better_than_base": False})  # 3 personas give no interval
    params = yaml.safe_load((ws / "params.yaml").read_text())
    assert params["judge"]["kind"] == "llm" and params["eval"]["partner"] == "llm"

    r = ppg_pipeline(workspace=str(ws))
    assert not r["skipped"] and r["trained"] == {"greedy": True, "k2": True}
    # the judge stage gave every turn a reward, recorded which judge, and asked each prompt once
    summary = json.loads((ws / "data/judged/summary.json").read_text())
    assert summary["turns"] == 180 and summary["null_rewards"] == 0 and summary["judge"]["kind"] == "llm"
    judged = [ln.reward for d in read_dialogues(ws / "data/judged/dialogues.jsonl") for ln in d.turns("patient")]
    assert 0 < judged.count(0.0) < len(judged) and set(judged) == {0.0, 1.0}
    assert summary["counts"]["requests"] == 60 * (3 + 2) and summary["counts"]["cache_hits"] == 0
    # online evaluation played real validation personas against the partner model, judged by the LLM
    m = json.loads((ws / "eval/k2/metrics.json").read_text())["online"]
    assert m["partner"] == "llm" and m["judge"]["kind"] == "llm" and m["dialogues"] == 3
    assert m["judge"]["model"] == "grader" and [j["model"] for j in m["rewards_by"]] == ["judge"]
    assert m["consistency"]["n"] == 3 and len(m["drift"]) == 2
    # registered and gated (no champion yet: the thresholds decide)
    assert r["gate"]["promoted"] and r["gate"]["model"] == "ppg-therapy"
    assert registry_state(ws, "ppg-therapy")[2] == {"champion": "1", "challenger": "1"}
    assert set(judge.state["auth"]) == {f"Bearer {SECRET}"}

    # 2. a reward model trained on the verdicts the LLM judge gave becomes the judge: the judge
    #    section changed, so DVC reruns the judge stage and everything after it
    set_params(ws, judge={"kind": "reward-model", "reward_model": {"path": "models/judge", "steps": 60,
                                                                   "batch_size": 16, "lr": 0.01, "max_length": 96}})
    out = subprocess.run([str(BIN / "ppg"), "train-judge", "data/judged", "--no-progress"], cwd=ws, env=env,
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    r = ppg_pipeline(workspace=str(ws))
    assert not r["skipped"] and r["trained"] == {"greedy": True, "k2": True}
    summary = json.loads((ws / "data/judged/summary.json").read_text())
    assert summary["judge"]["kind"] == "reward-model" and summary["counts"]["judged_turns"] == 180
    # the policy trained on the reward model's rewards, so the LLM grader (not the reward model) grades it
    m = json.loads((ws / "eval/k2/metrics.json").read_text())["online"]
    assert m["judge"]["model"] == "grader" and [j["kind"] for j in m["rewards_by"]] == ["reward-model"]
    assert m["reward"]["n"] == 3 and m["consistency"]["n"] == 3 and m["drift_of"] == "consistency"
    g = r["gate"]
    assert g["model"] == "ppg-therapy" and g["challenger"] == "2"
    c, versions, _ = registry_state(ws, "ppg-therapy")
    assert versions == [1, 2] and c.get_model_version("ppg-therapy", "2").tags["ppg.gate"]
    gate_json = json.loads(Path(c.download_artifacts(r["parent_run_id"], "gate.json", str(tmp_path))).read_text())
    diff = gate_json["decision"]["difference"]  # challenger and champion on the same 3 test personas
    assert diff is not None and diff["n"] == 3
    none_dropped = {"played": 3, "dropped": 0, "ids": [], "reasons": {}}  # the gate reports each side's drops
    assert gate_json["decision"]["partner_drops"] == {"challenger": none_dropped, "champion": none_dropped}
    assert m["partner_identity"] == {"kind": "in-process", "model": "tiny"} and m["partner_drops"] == none_dropped
