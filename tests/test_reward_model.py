"""The per-turn reward model: trained on logged verdicts with persona groups held out, it separates
planted contradictions on personas it never saw, is registered as its own model, and its scores
are the rewards `ppg judge` gives with judge.kind reward-model."""

import dataclasses
import json
import random

import pytest

from ppg.config import JudgeConfig, MlflowConfig, ModelConfig, Params, TrainConfig
from ppg.config_ops import RewardModelConfig
from ppg.data.schema import Dialogue, read_dialogues, write_dialogues

CONSISTENT = ["I walked my dog by the river today.", "My dog loves the park.", "Dogs are the best company.",
              "I bought a new leash for my dog.", "My dog sleeps at my feet."]
CONTRADICTING = ["I have never owned a pet in my life.", "Honestly I cannot stand dogs.",
                 "Animals scare me, I avoid them.", "I am allergic to every animal.", "Pets are a waste of money."]
ASKS = ["How was your day?", "Tell me about your weekend.", "What do you do for fun?", "Anything new?"]


def dog_lovers(n: int, seed: int, labelled: bool = True) -> list[Dialogue]:
    """Dog lovers who sometimes say a line that contradicts it (40%), with or without verdicts."""
    rng, out = random.Random(seed), []
    for i in range(n):
        lines = []
        for _ in range(4):
            bad = rng.random() < 0.4
            lines += [{"speaker": "friend", "text": rng.choice(ASKS)},
                      {"speaker": "me", "text": rng.choice(CONTRADICTING if bad else CONSISTENT),
                       "reward": (0.0 if bad else 1.0) if labelled else None, "meta": {"planted": bad}}]
        out.append(Dialogue.model_validate({
            "dialogue_id": f"dog-{seed}-{i}", "domain": "chatting", "source": "fixture",
            "personas": {"me": f"I am person {seed}-{i}, a dog lover who walks my dog every day.", "friend": ""},
            "evaluated_speakers": ["me"], "lines": lines}))
    return out


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    from ppg.train.judge import train_judge

    tmp = tmp_path_factory.mktemp("reward-model")
    write_dialogues(tmp / "logged" / "dialogues.jsonl", dog_lovers(60, 0))
    p = Params(model=ModelConfig(spec="tiny", base=""), train=TrainConfig(workdir=str(tmp / "work")),
               judge=JudgeConfig(kind="reward-model", reward_model=RewardModelConfig(
                   path=str(tmp / "judge"), steps=150, batch_size=16, lr=0.01, max_length=128)),
               mlflow=MlflowConfig(tracking_uri=f"sqlite:///{tmp}/mlflow.db", artifacts=str(tmp / "artifacts")))
    p = dataclasses.replace(p, eval=dataclasses.replace(p.eval, min_contradictions=5))
    from ppg.registry import register_judge

    card = train_judge(p, tmp / "logged", tmp / "judge", progress=False)
    card["registered"] = register_judge(p, tmp / "judge", card["mlflow_run_id"])
    return p, tmp, card


def test_the_reward_model_separates_planted_contradictions_of_unseen_personas(trained):
    from mlflow import MlflowClient

    p, tmp, card = trained
    auc = card["validation"]["auc"]
    assert auc["groups"] == 12 and auc["n"] == 48  # 20% of the 60 personas, held out whole
    assert auc["lo"] > 0.55, auc  # the lower bound of its persona-group bootstrap interval
    assert card["validation"]["by_domain"]["chatting"]["auc"]["mean"] == auc["mean"]
    saved = json.loads((tmp / "judge" / "judge.json").read_text())
    assert saved["fingerprint"] == card["fingerprint"] and (tmp / "judge" / "calibration.png").stat().st_size > 0
    assert sum(r["n"] for r in saved["validation"]["calibration"]) == 48 and 0 <= saved["validation"]["ece"] <= 1
    c = MlflowClient(p.mlflow.tracking_uri)
    v = c.get_model_version("ppg-judge", card["registered"]["version"])
    assert float(v.tags["ppg.validation_auc"]) == pytest.approx(auc["mean"])
    run = c.get_run(card["mlflow_run_id"])
    assert run.data.tags["ppg.stage"] == "train-judge"
    assert run.data.metrics["validation.auc"] == pytest.approx(auc["mean"])


def test_its_scores_are_the_rewards_ppg_judge_gives(trained, tmp_path):
    from ppg.judges.stage import judge_dataset

    p, _, card = trained
    fresh = dog_lovers(10, 7, labelled=False)  # new personas, no verdicts
    write_dialogues(tmp_path / "logs" / "dialogues.jsonl", fresh)
    s = judge_dataset(p, tmp_path / "logs", tmp_path / "judged")
    assert s["judge"]["kind"] == "reward-model" and s["judge"]["model"] == card["fingerprint"]
    assert s["counts"]["judged_turns"] == 40 and s["null_rewards"] == 0
    turns = [ln for d in read_dialogues(tmp_path / "judged" / "dialogues.jsonl") for ln in d.turns("me")]
    bad = [ln.reward for ln in turns if ln.meta["planted"]]
    good = [ln.reward for ln in turns if not ln.meta["planted"]]
    assert sum(good) / len(good) > sum(bad) / len(bad)  # lower rewards where contradictions were planted
    assert all(0.0 <= ln.reward <= 1.0 and ln.judge["persona"] == int(ln.reward >= 0.5) for ln in turns)


def test_training_needs_both_kinds_of_verdict(trained, tmp_path):
    from ppg.train.judge import train_judge

    p, _, _ = trained
    only_good = [d.model_copy(update={"lines": [ln.model_copy(update={"reward": 1.0}) if ln.speaker == "me" else ln
                                                for ln in d.lines]}) for d in dog_lovers(10, 3)]
    write_dialogues(tmp_path / "d.jsonl", only_good)
    with pytest.raises(ValueError, match="need consistent and contradicting lines"):
        train_judge(p, tmp_path / "d.jsonl", tmp_path / "judge", progress=False)


def test_a_stopped_run_resumes_to_the_reward_model_an_uninterrupted_run_trains(trained, tmp_path):
    """Checkpoints hold the head's weights, the optimizer and the batch sampler's state: stopped
    after 3 of 6 steps and run again, it continues in the same MLflow run and ends with the same
    losses and the same saved weights as a run that was never stopped."""
    from ppg.train.judge import train_judge

    p, tmp, _ = trained

    def at(folder):
        rm = dataclasses.replace(p.judge.reward_model, steps=6, batch_size=8, path=str(folder / "judge"),
                                 checkpoint_every=1)
        return dataclasses.replace(p, train=TrainConfig(workdir=str(folder / "work")),
                                   judge=dataclasses.replace(p.judge, reward_model=rm))

    whole = train_judge(at(tmp_path / "whole"), tmp / "logged", tmp_path / "whole" / "judge", progress=False)
    stopped = train_judge(at(tmp_path / "split"), tmp / "logged", tmp_path / "split" / "judge", progress=False,
                          stop_after=3)
    assert stopped["stopped_at"] == 3 and not (tmp_path / "split" / "judge").exists()
    done = train_judge(at(tmp_path / "split"), tmp / "logged", tmp_path / "split" / "judge", progress=False)
    assert done["mlflow_run_id"] == stopped["mlflow_run_id"] != whole["mlflow_run_id"]
    assert done["loss_history"] == whole["loss_history"] and len(done["loss_history"]) == 6
    assert done["fingerprint"] == whole["fingerprint"]  # the saved weights, by content


def test_its_card_lists_the_training_personas_and_online_ppg_trains_against_it(trained, tmp_path):
    """The card names what another grader must not share; online PPG on real personas takes its
    rewards from it (P(consistent) per turn) and records which judge that was."""
    from ppg.config import LoraConfig, OnlineConfig, TrainConfig
    from ppg.data.turns import persona_key
    from ppg.train.online import train_online

    p, tmp, card = trained
    everyone = {persona_key("chatting", d.personas["me"]) for d in dog_lovers(60, 0)}
    assert len(card["train_personas"]) == 48 and set(card["train_personas"]) < everyone  # 12 held out
    write_dialogues(tmp_path / "judged" / "dialogues.jsonl", dog_lovers(20, 5))
    q = dataclasses.replace(
        p, judge=dataclasses.replace(p.judge, out=str(tmp_path / "judged")),
        train=TrainConfig(out=str(tmp_path / "models"), workdir=str(tmp_path / "work"), checkpoint_every=2,
                          lora=LoraConfig(enabled=True, r=4)),
        eval=dataclasses.replace(p.eval, partner_model="tiny"),
        online=OnlineConfig(partner="llm", personas_per_step=2, group=2, turns=2, steps=2,
                            generation={"max_new_tokens": 5, "temperature": 1.0, "top_p": 1.0, "batch_size": 4}))
    r = train_online(q, "k2", progress=False)
    assert r["reward_judge"] == {"kind": "reward-model", "model": card["fingerprint"], "base": "tiny",
                                 "validation_auc": card["validation"]["auc"]["mean"]}
    rewards = [h["reward"] for h in r["history"]]
    assert len(rewards) == 2 and all(0.0 < x < 1.0 for x in rewards)  # probabilities, not verdicts


def test_with_lora_the_backbone_trains_too_and_the_saved_judge_scores_as_trained(trained, tmp_path):
    """reward_model.lora_r: adapters on the attention train with the head; the saved folder has
    them merged, so it loads as a plain classifier and reproduces the held-out AUC it reported."""
    import torch

    from ppg.judges.reward_model import load_reward_model, score_texts
    from ppg.stats import grouped_auc
    from ppg.train.judge import judge_examples, split_groups, train_judge

    p, tmp, frozen = trained
    rm = dataclasses.replace(p.judge.reward_model, lora_r=4, steps=60, path=str(tmp_path / "lora"))
    q = dataclasses.replace(p, judge=dataclasses.replace(p.judge, reward_model=rm))
    card = train_judge(q, tmp / "logged", tmp_path / "lora", progress=False)
    model, tok, saved = load_reward_model(tmp_path / "lora")
    assert saved["fingerprint"] == card["fingerprint"] != frozen["fingerprint"]
    base, _, _ = load_reward_model(tmp / "judge")  # the frozen-backbone judge: same base weights
    name = "model.layers.0.self_attn.q_proj.weight"
    assert not torch.equal(dict(model.named_parameters())[name], dict(base.named_parameters())[name])
    _, val = split_groups(judge_examples(read_dialogues(tmp / "logged" / "dialogues.jsonl"), rm.history),
                          rm.validation, rm.seed)
    scores = score_texts(model, tok, [e["text"] for e in val], rm.max_length)
    turns = [{"group": e["group"], "reward": e["label"], "score": s} for e, s in zip(val, scores)]
    again = grouped_auc(turns, q.eval.min_contradictions, rm.seed)
    assert again["mean"] == pytest.approx(card["validation"]["auc"]["mean"], abs=1e-6)
    assert card["validation"]["auc"]["mean"] > 0.6
