"""What a judge is: it scores the evaluated speakers' lines of dialogues, turn by turn.

Every judge sets, on each judged line, `reward` (a number in [0, 1], or None when it reached no
verdict: never read as 0 or 1) and `judge`, a dict that holds its own texts beside two verdicts
in one shape: `persona` (prompt-to-line: the line fits the backstory) and `commitment`
(line-to-line: it contradicts none of the speaker's earlier lines), each 1, 0 or None. A judge
that knows what the partner asked also says `asked` and `answered` (the simulator's does).
Evaluation and online training read only this shape (verdict_rates), never a judge's class.

    LabelJudge   the verdicts logged with the data, as imported
    SimJudge     exact, for simulator worlds (ppg.sim.judge)
    LLMJudge     an OpenAI-compatible endpoint (ppg.judges.llm)
"""

from typing import Protocol

from ppg.data.schema import Dialogue, Line


class Judge(Protocol):
    counts: dict
    """What it did so far: requests, retries, verdicts it could not reach, cache hits."""

    def judge(self, dialogues: list[Dialogue]) -> list[Dialogue]:
        """Copies of the dialogues with every evaluated speaker's line judged."""

    def identity(self) -> dict:
        """What its verdicts depend on (kind, model, prompts, knobs), recorded beside them."""


class LabelJudge:
    """The rewards and verdicts logged with the data (e.g. the Consistent-LLMs prompt-to-line
    verdicts); null stays null."""

    def __init__(self):
        self.counts = {"turns": 0, "null": 0}

    def identity(self) -> dict:
        return {"kind": "labels"}

    def judge(self, dialogues: list[Dialogue]) -> list[Dialogue]:
        for d in dialogues:
            for s in d.evaluated_speakers:
                rewards = [ln.reward for ln in d.turns(s)]
                self.counts["turns"] += len(rewards)
                self.counts["null"] += sum(r is None for r in rewards)
        return [d.model_copy(deep=True) for d in dialogues]


def both_hold(persona, commitment) -> int | None:
    """Consistency of a turn from its two verdicts: one known failure decides, even when the other
    is unknown; otherwise unknown if either is."""
    if 0 in (persona, commitment):
        return 0
    return None if None in (persona, commitment) else 1


def consistent(judge: dict | None) -> int | None:
    """A turn as a unit of the consistency RATE: 1 or 0 when both verdicts are known, else None.
    (A reward may be 0 on one known failure (both_hold), but a rate that counted the turns whose
    only known verdict failed, and skipped those whose only known verdict held, would be biased
    down.)"""
    j = judge or {}
    p, c = j.get("persona"), j.get("commitment")
    return None if p is None or c is None else int(bool(p) and bool(c))


def verdict_rates(lines: list[Line]) -> dict:
    """What judged lines of one speaker add up to: the shares of turns whose persona verdict,
    commitment verdict and both (consistency) hold, the mean reward, and coverage (asked turns
    that were answered; only a judge that knows what was asked has it). Each share is over the
    turns with the verdicts it needs (consistency: both), None when no turn has them."""
    def share(values):
        known = [v for v in values if v is not None]
        return sum(known) / len(known) if known else None

    j = [ln.judge or {} for ln in lines]
    asked = [x for x in j if x.get("asked")]
    return {"turns": len(lines), "consistency": share([consistent(x) for x in j]),
            "persona": share([x.get("persona") for x in j]), "commitment": share([x.get("commitment") for x in j]),
            "reward": share([ln.reward for ln in lines]),
            "coverage": share([x.get("answered") for x in asked]) if any("asked" in x for x in j) else None}
