"""A policy trained against a judge is graded by another: the same judge is refused when params
load and again when evaluation meets the judges named in the training data; two reward models
must have been trained on disjoint personas."""

import json

import pytest

from ppg.config import EvalConfig, JudgeConfig, Params
from ppg.config_ops import RewardModelConfig
from ppg.data.schema import Dialogue
from ppg.data.turns import persona_key
from ppg.judges.independent import check_independent, reward_judges, reward_model_folders

REAL = dict(mode="online", partner="llm", qa=False, primary="online.consistency")
NO_SIM_GATE = {"thresholds": {}, "non_inferiority": {}}


def params(judge: dict, grader: dict) -> Params:
    from ppg.config import RegistryConfig

    return Params(judge=JudgeConfig(**judge), eval=EvalConfig(**REAL, judge=grader),
                  registry=RegistryConfig(**NO_SIM_GATE))


def test_the_training_judge_cannot_grade_real_persona_rollouts():
    with pytest.raises(ValueError, match="eval.judge: the rollouts would be graded by the judge that gives the "
                                         "training rewards .judge.kind llm"):
        params({"kind": "llm"}, {})
    with pytest.raises(ValueError, match="graded by the judge that gives the training rewards .judge.kind reward"):
        params({"kind": "reward-model"}, {"model": "other"})  # an llm knob does not change a reward model
    assert params({"kind": "llm"}, {"model": "grader"}).eval_judge().model == "grader"
    assert params({"kind": "llm"}, {"base_url": "http://10.0.0.2:8000/v1"}).eval_judge().kind == "llm"
    g = params({"kind": "reward-model"}, {"reward_model": {"path": "models/judge-eval"}}).eval_judge()
    assert g.reward_model.path == "models/judge-eval" and g.reward_model.history == 4  # the rest inherited
    assert params({"kind": "labels"}, {"kind": "llm"}).eval_judge().kind == "llm"  # logged labels, an LLM grades
    with pytest.raises(ValueError, match=r"eval.judge: unknown key\(s\) \['modle'\]"):
        params({"kind": "llm"}, {"modle": "grader"})
    with pytest.raises(ValueError, match="eval.judge: kind: 'gpt' is not a judge kind; known: labels, llm, "
                                         "reward-model"):
        params({"kind": "llm"}, {"kind": "gpt"})


def line(text, by=None, reward=1.0):
    return {"speaker": "patient", "text": text, "reward": reward, "judge": {"persona": 1, "by": by} if by else None}


def test_the_judges_named_in_the_data_are_collected_once_each():
    a, b = {"kind": "llm", "model": "judge", "prompts": "1"}, {"kind": "reward-model", "model": "f00"}
    d = Dialogue.model_validate({"dialogue_id": "x", "domain": "therapy", "source": "t",
                                 "personas": {"patient": "p", "therapist": ""}, "evaluated_speakers": ["patient"],
                                 "lines": [{"speaker": "therapist", "text": "hi"}, line("a", a), line("b", b),
                                           line("c", {**a, "prompts": "2"}), line("d", {"kind": "labels"}),
                                           line("e")]})
    assert reward_judges([d, d]) == [a, b]  # new prompt wording, same model: the same judge


def card(folder, fingerprint, personas):
    folder.mkdir(parents=True)
    (folder / "judge.json").write_text(json.dumps({"fingerprint": fingerprint, "train_personas": sorted(personas)}))
    return folder


def test_two_reward_models_must_have_been_trained_on_disjoint_personas(tmp_path):
    a, b, c = (persona_key("therapy", f"patient {i}") for i in range(3))
    trained, grader = {"kind": "reward-model", "model": "f-train"}, {"kind": "reward-model", "model": "f-eval"}
    card(tmp_path / "train", "f-train", [a, b])
    card(tmp_path / "disjoint", "f-eval", [c])
    cfgs = [JudgeConfig(kind="reward-model", reward_model=RewardModelConfig(path=str(tmp_path / x)))
            for x in ("train", "disjoint")]
    folders = reward_model_folders(*cfgs)
    assert folders == {"f-train": str(tmp_path / "train"), "f-eval": str(tmp_path / "disjoint")}
    check_independent(grader, [trained], folders)  # disjoint: accepted
    card(tmp_path / "overlap", "f-eval", [b, c])
    with pytest.raises(ValueError, match="shares 1 training personas"):
        check_independent(grader, [trained], {**folders, "f-eval": str(tmp_path / "overlap")})
    with pytest.raises(ValueError, match="cannot tell whether the grading reward model .* f-train"):
        check_independent(grader, [trained], {"f-eval": str(tmp_path / "disjoint")})  # no card: not assumed
    with pytest.raises(ValueError, match="graded by the judge that gave the training rewards .reward-model 'f-tr"):
        check_independent(trained, [trained], folders)
    check_independent({"kind": "llm", "model": "grader"}, [trained, {"kind": "llm", "model": "judge"}], {})
