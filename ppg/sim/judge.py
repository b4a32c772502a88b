"""SimJudge: the exact judge of simulator dialogues, on free text. It reads which
closed-vocabulary facts a reply states and checks them against the persona's story and the
speaker's own earlier lines (a Judge, ppg.judges.base). It lives with the simulator because it
reads the world's closed vocabulary, and the simulator judges what it simulates."""

from dataclasses import dataclass

from ppg.data.schema import Dialogue
from ppg.sim.world import ASK, RECALL, is_evasive, mentions

ASKED = {**{q: ("ask", a) for a, q in ASK.items()}, **{q: ("probe", a) for a, q in RECALL.items()}}


@dataclass
class Verdict:
    persona: int  # prompt-to-line: 0 if a stated fact contradicts the persona's story so far
    commitment: int  # line-to-line: 0 if a stated fact contradicts the speaker's earlier line
    conflicts: list[int]  # indices of the earlier lines it contradicts
    asked: str | None  # attribute the partner asked or probed right before, if any
    probe: bool
    answered: bool  # the reply states a value of the asked attribute
    reward: float


class SimJudge:
    """Exact judge of simulator dialogues (persona facts in meta.sim.persona).

    Story = the facts the backstory states plus those the partner has retold so far (a probe of
    an open fact reveals it). reward = 0 if the reply contradicts the story (persona verdict) or
    the speaker's own earlier statement (commitment verdict) - both must hold when require is
    "both" -; else, when the partner asked and the reply states no value of the asked attribute:
    evasive_reward after an ask, 0 after a probe (a direct re-check of one's own story must be
    answered); else 1. Dodging every question can therefore never win.
    """

    def __init__(self, evasive_reward: float = 0.5, require: str = "both"):
        if not 0.0 <= evasive_reward < 1.0:
            raise ValueError(f"evasive_reward: must be in [0, 1), got {evasive_reward}")
        if require not in ("both", "persona", "commitment"):
            raise ValueError(f"require: expected both, persona or commitment, got {require!r}")
        self.evasive_reward, self.require = evasive_reward, require
        self.counts = {"turns": 0}

    def identity(self) -> dict:
        return {"kind": "sim", "evasive_reward": self.evasive_reward, "require": self.require}

    def judge(self, dialogues: list[Dialogue]) -> list[Dialogue]:
        return [self.judge_dialogue(d) for d in dialogues]

    def verdicts(self, d: Dialogue, speaker: str, persona: dict) -> list[Verdict]:
        story = {a: persona["facts"][a] for a in persona["known"]}
        said: dict[str, list[tuple[str, int]]] = {}
        asked, out = None, []
        for i, ln in enumerate(d.lines):
            if ln.speaker != speaker:
                kind = ASKED.get(ln.text.strip())
                revealed = mentions(ln.text)
                story.update(revealed)  # the partner retells part of the story
                asked = kind if kind else (("probe", revealed[0][0]) if revealed else None)
                continue
            stated = mentions(ln.text)
            persona_ok = all(story.get(a, v) == v for a, v in stated)
            conflicts = sorted({j for a, v in stated for w, j in said.get(a, []) if w != v})
            answered = asked is not None and any(a == asked[1] for a, _ in stated)
            hold = {"both": persona_ok and not conflicts, "persona": persona_ok, "commitment": not conflicts}
            if not hold[self.require]:
                reward = 0.0
            elif asked is not None and not answered:
                reward = 0.0 if asked[0] == "probe" else self.evasive_reward
            else:
                reward = 1.0
            out.append(Verdict(int(persona_ok), int(not conflicts), conflicts, asked and asked[1],
                               bool(asked and asked[0] == "probe"), answered, reward))
            for a, v in stated:
                said.setdefault(a, []).append((v, i))
            asked = None
        return out

    def judge_dialogue(self, d: Dialogue) -> Dialogue:
        """A copy of d with every evaluated line's reward and judge fields set."""
        d = d.model_copy(deep=True)
        for speaker in d.evaluated_speakers:
            persona = d.meta["sim"]["persona"]
            it = iter(self.verdicts(d, speaker, persona))
            for ln in d.lines:
                if ln.speaker == speaker:
                    v = next(it)
                    self.counts["turns"] += 1
                    ln.reward = v.reward
                    ln.judge = {"persona": v.persona, "commitment": v.commitment, "line_to_line": v.conflicts,
                                "asked": v.asked, "probe": v.probe, "answered": v.answered,
                                "evasive": is_evasive(ln.text),
                                # a fact the backstory leaves open: answering its ask is a guess
                                "open": v.asked is not None and v.asked not in persona["known"]}
        return d
