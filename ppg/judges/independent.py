"""A policy trained against a judge is graded by another one.

Training pushes a policy toward whatever its reward judge scores high, errors included; the same
judge grading the result would report those errors as progress (reward hacking looks like
success). So online evaluation and the gate on real personas use `eval.judge`, and before they
grade anything the judges that gave the training rewards are named and compared with it:

  - the judge of every judged line of the training data (`lines[].judge.by` in judge.out: the judge
    stage's, and any kept from earlier runs), and the judge an online PPG run trained against;
  - same kind and model (an LLM's model name, a reward model's weights fingerprint) and, where
    both record it, the same endpoint = the same judge (ppg.judges.kinds.same_judge): refused;
  - two reward models must have been trained on disjoint personas (their judge.json lists the
    training personas' keys); a reward model whose training personas cannot be read is refused,
    since independence that cannot be checked is not assumed.

The simulator's judge is exact (it knows what it simulated): it grades its own worlds, and the
data it labelled, without this check.
"""

import json
from pathlib import Path

from ppg.judges.kinds import judge_key, same_judge


def reward_judges(dialogues) -> list[dict]:
    """The distinct identities of the judges whose verdicts these dialogues carry (`judge.by`)."""
    seen: dict[tuple, dict] = {}
    for d in dialogues:
        for ln in d.lines:
            by = (ln.judge or {}).get("by")
            if isinstance(by, dict) and by.get("kind") not in (None, "labels"):
                seen.setdefault(judge_key(by), by)
    return list(seen.values())


def card_personas(path: str | Path, fingerprint: str | None = None) -> set[str] | None:
    """The training personas' keys of the reward model at path (None when its card does not list
    them, or its weights are not the ones named by fingerprint)."""
    card_path = Path(path) / "judge.json"
    if not card_path.exists():
        return None
    card = json.loads(card_path.read_text())
    if fingerprint is not None and card.get("fingerprint") != fingerprint:
        return None
    return set(card["train_personas"]) if "train_personas" in card else None


def reward_model_folders(*cfgs) -> dict[str, str]:
    """fingerprint -> folder of the reward models the judge sections cfgs point at (where a card is)."""
    out = {}
    for cfg in cfgs:
        card = Path(cfg.reward_model.path) / "judge.json"
        if card.exists():
            out[json.loads(card.read_text()).get("fingerprint")] = str(cfg.reward_model.path)
    return out


def check_independent(grader: dict, trained_by: list[dict], rm_paths: dict[str, str]) -> None:
    """Refuse grading with `grader` (a judge identity) a policy trained on rewards of `trained_by`.
    rm_paths: reward-model fingerprint -> folder, for the models whose cards can be read."""
    for t in trained_by:
        if same_judge(t, grader):
            raise ValueError(f"eval.judge: the rollouts would be graded by the judge that gave the training "
                             f"rewards ({t.get('kind')} {t.get('model')!r}); a policy trained against a judge "
                             f"must be graded by another: set eval.judge to another model or kind")
        if t.get("kind") == grader.get("kind") == "reward-model":
            mine = card_personas(rm_paths.get(grader["model"], ""), grader["model"])
            theirs = card_personas(rm_paths.get(t["model"], ""), t["model"])
            if mine is None or theirs is None:
                missing = t["model"] if theirs is None else grader["model"]
                raise ValueError(f"eval.judge: cannot tell whether the grading reward model was trained on other "
                                 f"personas than the training reward model: the judge.json of {missing} (a "
                                 f"fingerprint) is not at judge.reward_model.path / eval.judge.reward_model.path or "
                                 f"lists no train_personas (retrain it with `ppg train-judge`)")
            both = mine & theirs
            if both:
                raise ValueError(f"eval.judge: the grading reward model shares {len(both)} training personas with the "
                                 f"reward model that gave the training rewards; train it on disjoint persona "
                                 f"groups (`ppg train-judge` on data without them)")
