"""Online evaluation on real personas: the policy plays personas of the held-out split of the
judged data against a partner model, a judge of new text scores every turn, and the metrics name
the partner and the judge."""

import dataclasses
import json

import pytest
from judge_server import FlakyJudge

from ppg.config import BuildConfig, JudgeConfig, MlflowConfig, ModelConfig, Params
from ppg.data.build import assign_splits
from ppg.data.schema import Dialogue, write_dialogues
from ppg.data.turns import persona_groups


def patients(n: int) -> list[Dialogue]:
    return [Dialogue.model_validate({
        "dialogue_id": f"t-{i}", "domain": "therapy", "source": "fixture",
        "personas": {"patient": f"I am patient {i}. I work night shifts and sleep badly.", "therapist": ""},
        "evaluated_speakers": ["patient"],
        "lines": [{"speaker": "therapist", "text": "How are you this week?"},
                  {"speaker": "patient", "text": "Tired, the night shifts again.", "reward": 1.0}]})
        for i in range(n)]


@pytest.fixture
def real(tmp_path, monkeypatch):
    monkeypatch.setenv("PPG_JUDGE_API_KEY", "sk-test-real-eval")
    write_dialogues(tmp_path / "judged" / "dialogues.jsonl", patients(30))
    judge = FlakyJudge(healthy=10 ** 6)
    p = Params(model=ModelConfig(spec="tiny", base=""), build=BuildConfig(seed=0),
               judge=JudgeConfig(kind="labels", base_url=judge.url, out=str(tmp_path / "judged"),
                                 cache=str(tmp_path / "cache.sqlite"), retries=1, backoff_s=0.01, timeout_s=10),
               mlflow=MlflowConfig(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db", artifacts=str(tmp_path / "a")))
    # the data's rewards are logged labels; an LLM judge grades the new text of the rollouts
    ev = dataclasses.replace(p.eval, mode="online", partner="llm", partner_model="tiny", personas=2, turns=3,
                             qa=False, primary="online.consistency", judge={"kind": "llm"},
                             generation={"max_new_tokens": 6, "temperature": 1.0, "top_p": 1.0, "batch_size": 2})
    reg = dataclasses.replace(p.registry, non_inferiority={})
    return dataclasses.replace(p, eval=ev, registry=reg), judge


def test_a_policy_plays_held_out_real_personas_against_a_partner_model(real, tiny_model):
    from transformers import AutoModelForCausalLM

    from ppg.evaluate.run import measure
    from ppg.models import load_tokenizer

    p, judge = real
    model, tok = AutoModelForCausalLM.from_pretrained(tiny_model), load_tokenizer(tiny_model)
    p = dataclasses.replace(p, eval=dataclasses.replace(p.eval, qa=True))
    metrics, dialogues, _ = measure(p, model, tok, "validation", "k2")
    online = metrics["online"]
    assert online["partner"] == "llm" and online["judge"]["kind"] == "llm" and online["domain"] == "therapy"
    assert online["dialogues"] == 2 and [x["turn"] for x in online["drift"]] == [0, 1, 2]
    for name in ("consistency", "persona", "reward"):
        assert online[name]["n"] == 2 and online[name]["mean"] == 1.0  # the judge answered NO / [] throughout
    assert online["coverage"]["n"] == 0  # no judge of free text knows what was asked: unknown, not 0
    # Q&A: the partner asked the 3 therapy questions after each dialogue; the judge checked every answer
    assert online["qa"]["n"] == 2 and online["qa"]["mean"] == 1.0 and online["qa_unknown"] == 0
    assert 0 < online["engagement"]["mean"] <= 6 / 12 and online["engagement"]["n"] == 2  # 6 new tokens a reply
    assert online["rewards_by"] == [] and online["judge"]["model"] == "judge"  # logged labels: no judge named
    # per dialogue: 3 prompt-to-line, 2 line-to-line questions; then per answer (at most) 2 new ones,
    # the dialogue's own lines are cached
    assert 2 * (3 + 2) < judge.state["n"] <= 2 * (3 + 2) + 2 * 3 * 2
    # every persona played is a validation persona, as ppg build split them
    ds = patients(30)
    splits, _ = assign_splits(persona_groups(ds), p.build.splits, p.build.folds, p.build.seed)
    allowed = {d.personas["patient"] for d, sp in zip(ds, splits) if sp == "validation"}
    for d in dialogues:
        assert [ln.speaker for ln in d.lines] == ["therapist", "patient"] * 3
        assert d.personas["patient"] in allowed and d.source == "rollout"


def test_real_persona_rollouts_need_a_judge_of_new_text(real):
    p, _ = real
    with pytest.raises(ValueError, match="eval.judge: llm rollouts are new text, and kind labels only keeps"):
        Params(eval=dataclasses.replace(p.eval, judge={}), judge=JudgeConfig(), registry=p.registry)
    from ppg.config import OnlineConfig

    with pytest.raises(ValueError, match="online.partner: llm rollouts are new text"):
        Params(online=OnlineConfig(partner="llm"), judge=JudgeConfig())
    gate = dataclasses.replace(p.registry, non_inferiority={"online.coverage": 0.1})  # params.yaml's gate
    with pytest.raises(ValueError, match="online.coverage is never measured .eval.partner is 'llm'"):
        Params(eval=p.eval, judge=p.judge, registry=gate)  # only the simulator knows what it asked


def test_online_ppg_plays_training_personas_against_the_partner_model(real, tmp_path, tiny_model):
    """online.partner llm: the same rollouts on the TRAIN split's personas, each played `group`
    times (one leave-one-out group), every turn judged by the LLM judge."""
    from ppg.config import LoraConfig, OnlineConfig, TrainConfig
    from ppg.train.online import train_online

    p, judge = real
    p = dataclasses.replace(  # it trains against the LLM judge, so another model would grade it
        p, judge=dataclasses.replace(p.judge, kind="llm"), eval=dataclasses.replace(p.eval, judge={"model": "grader"}),
        train=TrainConfig(out=str(tmp_path / "models"), workdir=str(tmp_path / "work"), checkpoint_every=2,
                             lora=LoraConfig(enabled=True, r=4)),
        online=OnlineConfig(partner="llm", personas_per_step=2, group=2, turns=2, steps=2,
                            generation={"max_new_tokens": 5, "temperature": 1.0, "top_p": 1.0, "batch_size": 4}))
    r = train_online(p, "k2", progress=False)
    assert r["steps"] == 2 and all(h["reward"] == 1.0 for h in r["history"])  # every verdict: consistent
    assert r["history"][0]["kl"] == pytest.approx(0.0, abs=1e-7)
    assert r["reward_judge"]["kind"] == "llm" and r["reward_judge"]["model"] == "judge"  # what evaluation avoids
    rollouts = [json.loads(x) for f in sorted((tmp_path / "work").rglob("rollouts/*.jsonl"))
                for x in f.read_text().splitlines()]
    assert len(rollouts) == 2 * 4 and judge.state["n"] == 2 * 4 * (2 + 1)  # per dialogue: 2 + 1 questions
    ds = patients(30)
    splits, _ = assign_splits(persona_groups(ds), p.build.splits, p.build.folds, p.build.seed)
    train_personas = {d.personas["patient"] for d, sp in zip(ds, splits) if sp == "train"}
    assert all(d["personas"]["patient"] in train_personas for d in rollouts)
    first_step = rollouts[:4]
    assert len({d["personas"]["patient"] for d in first_step}) == 2  # 2 personas x 2 rollouts each


def test_a_persona_file_replaces_the_split_and_refuses_training_personas(real, tmp_path, tiny_model):
    from transformers import AutoModelForCausalLM

    from ppg.data.personas import write_personas
    from ppg.evaluate.run import measure
    from ppg.models import load_tokenizer

    p, _ = real
    model, tok = AutoModelForCausalLM.from_pretrained(tiny_model), load_tokenizer(tiny_model)
    f = tmp_path / "personas.jsonl"
    mine = [{"domain": "therapy", "speaker": "patient", "persona": f"I am a new patient {i}.", "meta": {}}
            for i in range(3)]
    write_personas(f, mine + [{"domain": "education", "speaker": "student", "persona": "I like maps.", "meta": {}}])
    ev = dataclasses.replace(p.eval, personas_file=str(f), domain="therapy", personas=3)
    _, dialogues, _ = measure(dataclasses.replace(p, eval=ev), model, tok, "validation", "k2")
    assert sorted(d.personas["patient"] for d in dialogues) == [x["persona"] for x in mine]
    ds = patients(30)
    splits, _ = assign_splits(persona_groups(ds), p.build.splits, p.build.folds, p.build.seed)
    trained_on = next(d.personas["patient"] for d, sp in zip(ds, splits) if sp == "train")
    write_personas(f, mine + [{"domain": "therapy", "speaker": "patient", "persona": trained_on, "meta": {}}])
    with pytest.raises(ValueError, match="persona 4 .* is one of the train split's personas"):
        measure(dataclasses.replace(p, eval=ev), model, tok, "validation", "k2")


def test_the_real_persona_recipe_loads_and_its_example_sessions_pass_validation(tmp_path):
    """params.real.yaml over params.yaml: the llm partner graded by a reward model that is not the
    training reward (logged labels), and the shipped sessions pass the validation gate as written."""
    from pathlib import Path

    import yaml

    from ppg.data.importers import import_paths
    from ppg.data.schema import write_dialogues as write
    from ppg.data.validate import validate_dataset
    from ppg.overlay import merged_text

    root = Path(__file__).resolve().parents[1]
    p = Params.from_dict(yaml.safe_load(merged_text(root / "params.yaml", root / "params.real.yaml")), "merged")
    assert p.eval.partner == "llm" and p.judge.kind == "labels" and p.eval.qa
    assert p.eval_judge().kind == "reward-model" and p.eval_judge().reward_model.path == "models/grader"
    assert "online.engagement" in p.registry.non_inferiority and "online.coverage" not in p.registry.non_inferiority
    fmt, paths = p.data.source.split(":", 1)
    dialogues, _ = import_paths(fmt, [root / paths])
    grader, _ = import_paths("jsonl", [root / "data/examples/grader.jsonl"])
    assert len(dialogues) == 120 and len(grader) == 120
    assert not {d.personas["patient"] for d in dialogues} & {d.personas["patient"] for d in grader}
    write(tmp_path / "in" / "dialogues.jsonl", dialogues)
    assert validate_dataset(tmp_path / "in", tmp_path / "report", p.validate)


def test_the_partner_opens_with_a_plain_cue_and_the_teacher_teaches_the_personas_topic():
    from ppg.partner import file_episodes, partner_chat

    e, = file_episodes([{"domain": "education", "speaker": "student", "persona": "I like maps.",
                         "meta": {"topic": "Fractions"}}], [], "personas.jsonl")
    system, cue = partner_chat(e)
    assert e.partner == "teacher" and "guiding one student through Fractions at their level" in system
    assert cue == "The student has just joined. Say your first line to them."
