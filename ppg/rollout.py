"""Rollouts: a policy model plays its persona against a Partner, turn by turn, with batched
sampling, and a Judge scores every turn. Used by online evaluation, the gate and online PPG.
Rollout dialogues are canonical Dialogues (judged rewards; the partner's episodes say which
source and meta they record). The simulator (ppg.sim.partner) is a Partner; so is any model or
service that answers `reply(episodes)` (ppg.partner_models: a model in this process or behind an
endpoint). A partner that keeps failing on a dialogue answers Drop for it: the dialogue is
abandoned, not judged and not returned, and counted by the caller (a shortened dialogue would
pass for a finished one).

The context of a dialogue is kept as token ids: each turn appends the chat template's text up to
the next reply (the previous end-of-turn marker, the partner's line, the assistant header) and
then the policy's own SAMPLED ids, never a re-tokenization of their decoded text. A reply cut at
max_new_tokens gets the template's end-of-turn marker as context, not as something it sampled.
Online PPG trains on exactly these ids (Rollout.input_ids, Rollout.turn_index)."""

from dataclasses import dataclass, field, replace
from typing import Protocol

import numpy as np
import torch

from ppg.data.build import end_of_turn_marker, sentinel
from ppg.data.schema import Dialogue, as_text
from ppg.generation import Backend, GenerationConfig, backend, end_ids
from ppg.judges.base import Judge

__all__ = ["GenerationConfig", "Drop", "Episode", "Partner", "Rollout", "play", "rollout_arrays"]


@dataclass
class Rollout:
    """One played dialogue as the policy saw it: every id of its context, and per token the
    persona turn whose sampled reply it belongs to (-1: template text, persona, partner lines)."""
    input_ids: list[int] = field(default_factory=list)
    turn_index: list[int] = field(default_factory=list)
    ended: list[bool] = field(default_factory=list)  # per turn: did the reply sample its end token

    def extend(self, ids, turn: int = -1):
        self.input_ids += list(ids)
        self.turn_index += [turn] * len(ids)


@dataclass
class Episode:
    """A dialogue to play: whom the policy speaks as (speaker, its persona's backstory, the system
    prompt), whom it talks to, and what the finished dialogue records. lines grows as it is
    played ({"speaker", "text"}; the partner speaks first, then the two alternate)."""
    dialogue_id: str
    group: int  # rollouts of one persona share a group (the leave-one-out baseline's unit)
    speaker: str
    persona: str
    partner: str
    domain: str
    source: str = "rollout"
    meta: dict = field(default_factory=dict)  # copied into the dialogue: what its judge reads
    lines: list[dict] = field(default_factory=list)

    def partner_lines(self) -> list[str]:
        return [ln["text"] for ln in self.lines if ln["speaker"] == self.partner]

    def dialogue(self) -> Dialogue:
        return Dialogue.model_validate({
            "dialogue_id": self.dialogue_id, "domain": self.domain, "source": self.source,
            "personas": {self.speaker: self.persona, self.partner: ""}, "evaluated_speakers": [self.speaker],
            "lines": self.lines, "meta": self.meta})


@dataclass(frozen=True)
class Drop:
    """A partner's answer for a dialogue it cannot go on with: why (the whole story) and reason
    (what its last attempt met, the key drops are counted by)."""
    why: str
    reason: str


class Partner(Protocol):
    """Who plays the other side of a rollout."""

    def reply(self, episodes: list[Episode]) -> list[str | None | Drop]:
        """The partner's next line in each dialogue so far (episode.lines); None ends that one, a
        Drop abandons it."""


def text_since_reply(tok, msgs: list[dict], replies: int, eot: str, ended_last: bool | None) -> str:
    """The template text of msgs between the speaker's last reply and its next one: msgs carry
    sentinel(j) as the content of the speaker's j-th earlier reply (replies of them), and the
    text after the last sentinel, with the generation prompt, is returned (all of it when there
    is none). When the last reply ended with the marker itself (its sampled stop token), the
    marker is not written again."""
    text = tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
    if replies:
        last = sentinel(replies - 1)
        text = text[text.index(last) + len(last):]
        if ended_last and text.startswith(eot):
            text = text[len(eot):]
    return text


def next_prompt(tok, persona: str, partner_lines: list[str], eot: str, ended_last: bool | None) -> str:
    """The policy's template text between its last reply's sampled ids and the next reply."""
    msgs = [{"role": "system", "content": persona}]
    for t, line in enumerate(partner_lines):
        msgs.append({"role": "user", "content": line})
        if t < len(partner_lines) - 1:
            msgs.append({"role": "assistant", "content": sentinel(t)})
    return text_since_reply(tok, msgs, len(partner_lines) - 1, eot, ended_last)


@torch.no_grad()
def play(model, tok, episodes: list[Episode], partner: Partner, judge: Judge, gen: GenerationConfig, seed: int,
         with_tokens: bool = False, stats: dict | None = None, replies: Backend | None = None):
    """Play every episode turn by turn (the partner's line, then the policy's sampled reply) until
    the partner ends it; returns the judged Dialogues (same order, without those the partner
    dropped), and with with_tokens=True also each dialogue's Rollout. The episodes themselves are
    left as given. stats, when given, gains "prefilled": the ids encoded at the start of turns
    over all dialogues (what a turn costs beyond one forward step per sampled token), and
    "dropped": {dialogue_id: Drop} of the dialogues the partner abandoned. replies: the backend to sample from (one kept
    across calls, e.g. by online training, which tells it of new weights); default: gen.backend
    over model."""
    torch.manual_seed(seed)
    was_training = model.training
    model.eval()
    eot, eos = end_of_turn_marker(tok), end_ids(model, tok)
    replies = replies or backend(gen, tok, model)
    dialogues, rollouts, prefilled, dropped = [], [], 0, {}
    for start in range(0, len(episodes), gen.batch_size):
        batch = [replace(e, lines=list(e.lines)) for e in episodes[start:start + gen.batch_size]]
        rolls = [Rollout() for _ in batch]
        replier = replies.batch(len(batch))
        active, t = list(range(len(batch))), 0
        while active:
            answers = partner.reply([batch[i] for i in active])
            dropped.update({batch[i].dialogue_id: a for i, a in zip(active, answers) if isinstance(a, Drop)})
            said = [(i, line) for i, line in zip(active, answers) if isinstance(line, str)]
            active = [i for i, _ in said]
            new = []
            for i, line in said:
                e, r = batch[i], rolls[i]
                e.lines.append({"speaker": e.partner, "text": line})
                # the marker is in the context already when the reply's own stop token IS the marker
                ended = bool(r.ended) and r.ended[-1] and tok.decode(r.input_ids[-1:]) == eot
                new.append(tok(next_prompt(tok, e.persona, e.partner_lines(), eot, ended),
                               add_special_tokens=False)["input_ids"])
                r.extend(new[-1])
            if not active:
                break
            for i, sampled in zip(active, replier.reply(active, new)):
                rolls[i].extend(sampled, turn=t)
                rolls[i].ended.append(bool(sampled) and sampled[-1] in eos)
                batch[i].lines.append({"speaker": batch[i].speaker,
                                       "text": as_text(tok.decode(sampled, skip_special_tokens=True).strip())})
            t += 1
        prefilled += replier.prefilled
        kept = [i for i, e in enumerate(batch) if e.dialogue_id not in dropped]
        dialogues += judge.judge([batch[i].dialogue() for i in kept])
        rollouts += [rolls[i] for i in kept]
    model.train(was_training)
    if stats is not None:
        stats["prefilled"] = stats.get("prefilled", 0) + prefilled
        stats.setdefault("dropped", {}).update(dropped)
    return (dialogues, rollouts) if with_tokens else dialogues


def rollout_arrays(r: Rollout) -> tuple[np.ndarray, np.ndarray]:
    """(input_ids, turn_index) of a rollout in the training layout of ppg build."""
    return np.asarray(r.input_ids, dtype=np.int64), np.asarray(r.turn_index, dtype=np.int64)
