"""The rollout seams: a policy plays any Partner, any Judge scores the turns, and what evaluation
and online training read of a judged dialogue is one shape (ppg.judges.base)."""

import math

import pytest
import torch

from ppg.data.schema import Dialogue
from ppg.judges.base import LabelJudge, both_hold, verdict_rates
from ppg.data.turns import turn_batch
from ppg.rollout import Episode, GenerationConfig, play


class ScriptedPartner:
    """Says `line <i>` until the dialogue has its number of partner lines, then ends it."""

    def __init__(self, lengths: dict[str, int]):
        self.lengths, self.calls = lengths, 0

    def reply(self, episodes):
        self.calls += 1
        return [f"line {len(e.partner_lines())}" if len(e.partner_lines()) < self.lengths[e.dialogue_id] else None
                for e in episodes]


class LengthJudge:
    """A judge of its own kind: reward 1 for a reply of under 40 characters, persona verdict alike,
    and no commitment verdict (unknown)."""

    def __init__(self):
        self.counts = {"turns": 0}

    def identity(self):
        return {"kind": "length"}

    def judge(self, dialogues):
        out = []
        for d in dialogues:
            d = d.model_copy(deep=True)
            for ln in d.turns(d.evaluated_speakers[0]):
                ok = int(len(ln.text) < 40)
                ln.reward, ln.judge = float(ok), {"persona": ok, "commitment": None}
                self.counts["turns"] += 1
            out.append(d)
        return out


def test_a_policy_plays_any_partner_to_the_length_it_chooses(tiny_model):
    from transformers import AutoModelForCausalLM

    from ppg.models import load_tokenizer

    tok = load_tokenizer(tiny_model)
    model = AutoModelForCausalLM.from_pretrained(tiny_model)
    lengths = {"a": 1, "b": 3, "c": 2, "d": 3}
    eps = [Episode(i, g, "bot", "You are a calm librarian.", "user", "chat") for g, i in enumerate(lengths)]
    partner, judge = ScriptedPartner(lengths), LengthJudge()
    gen = GenerationConfig(max_new_tokens=4, temperature=1.0, top_p=1.0, batch_size=2)
    dialogues, rolls = play(model, tok, eps, partner, judge, gen, 0, with_tokens=True)

    assert [d.dialogue_id for d in dialogues] == list(lengths) and all(e.lines == [] for e in eps)
    for d, r in zip(dialogues, rolls):
        n = lengths[d.dialogue_id]
        assert [ln.speaker for ln in d.lines] == ["user", "bot"] * n
        assert [ln.text for ln in d.turns("user")] == [f"line {i}" for i in range(n)]
        assert len(r.ended) == n and max(r.turn_index) == n - 1
        ids, ti = torch.tensor(r.input_ids), torch.tensor(r.turn_index)
        for t, ln in enumerate(d.turns("bot")):  # the dialogue's text is what the rollout's ids say
            assert ln.text == tok.decode(ids[ti == t].tolist(), skip_special_tokens=True).strip()
            assert ln.reward == float(len(ln.text) < 40) and ln.judge["commitment"] is None
    assert judge.counts["turns"] == sum(lengths.values())
    assert partner.calls == (3 + 1) + (3 + 1)  # two batches, each asked once past its longest dialogue

    b = turn_batch(dialogues, {"length": 1})  # what online training credits
    r, mask = b.rewards, b.mask
    assert mask.sum(1).tolist() == [1, 3, 2, 3] and r.shape == (4, 3)
    assert r[0, 1:].tolist() == [0.0, 0.0]  # padding is 0, and masked


def two_turns(first: float | None, second: float | None) -> Dialogue:
    return Dialogue.model_validate({
        "dialogue_id": "x", "domain": "t", "source": "test", "personas": {"bot": "A pilot.", "user": ""},
        "evaluated_speakers": ["bot"],
        "lines": [{"speaker": "user", "text": "hi"}, {"speaker": "bot", "text": "hello", "reward": first},
                  {"speaker": "user", "text": "job?"}, {"speaker": "bot", "text": "pilot", "reward": second}]})


def test_the_rollouts_turn_batch_keeps_unknown_verdicts_unknown():
    b = turn_batch([two_turns(1.0, None)], {"length": 1})
    r, mask = b.rewards, b.mask
    assert r[0, 0].item() == 1.0 and math.isnan(r[0, 1].item()) and mask.tolist() == [[True, True]]


def line(reward, **judge):
    from ppg.data.schema import Line

    return Line(speaker="bot", text="x", reward=reward, judge=judge or None)


def test_verdict_rates_count_only_turns_with_a_verdict():
    lines = [line(1.0, persona=1, commitment=1, asked="job", answered=True),
             line(0.0, persona=0, commitment=None, asked=None, answered=False),
             line(None, persona=None, commitment=1, asked="city", answered=False),
             line(0.5, persona=1, commitment=1, asked=None, answered=False)]
    rates = verdict_rates(lines)
    assert rates["turns"] == 4
    assert rates["persona"] == pytest.approx(2 / 3) and rates["commitment"] == 1.0
    assert rates["consistency"] == 1.0  # over the turns with both verdicts (1 and 4): a rate that counted
    # turn 2's lone known failure but not turn 3's lone known success would be biased down
    assert rates["reward"] == pytest.approx(1.5 / 3)
    assert rates["coverage"] == pytest.approx(1 / 2)  # of the two asked turns
    assert verdict_rates([line(None)])["persona"] is None  # unknown, never 0
    assert verdict_rates([line(1.0, persona=1, commitment=1)])["coverage"] is None  # the judge knows no asks
    assert [both_hold(*x) for x in [(1, 1), (0, None), (None, 1), (1, 0)]] == [1, 0, None, 0]


def test_the_label_judge_keeps_logged_verdicts_and_counts_the_missing_ones():
    d = two_turns(0.0, None)
    judge = LabelJudge()
    out = judge.judge([d])
    assert [ln.reward for ln in out[0].turns("bot")] == [0.0, None] and out[0] is not d
    assert judge.counts == {"turns": 2, "null": 1} and judge.identity() == {"kind": "labels"}
