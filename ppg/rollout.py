"""Rollouts: a policy model plays its persona against the simulator's partner, turn by turn, with
batched sampling; every turn is judged exactly (SimJudge). Used by online evaluation, the gate
and online PPG. Rollout dialogues are canonical Dialogues (source "simulator", judged rewards).

The context of a dialogue is kept as token ids: each turn appends the chat template's text up to
the next reply (the previous end-of-turn marker, the partner's line, the assistant header) and
then the policy's own SAMPLED ids, never a re-tokenization of their decoded text. A reply cut at
max_new_tokens gets the template's end-of-turn marker as context, not as something it sampled.
Online PPG trains on exactly these ids (Rollout.input_ids, Rollout.turn_index)."""

import random
from dataclasses import dataclass, field

import numpy as np
import torch

from ppg.data.build import end_of_turn_marker, sentinel
from ppg.data.schema import as_text
from ppg.judges import SimJudge
from ppg.sim.simulate import SPEAKER, scene, to_dialogue


@dataclass
class GenerationConfig:
    max_new_tokens: int = 32
    """Longest reply, in tokens."""
    temperature: float = 0.7
    """Sampling temperature (0 = greedy)."""
    top_p: float = 0.9
    """Nucleus sampling."""
    batch_size: int = 8
    """Dialogues generated together."""


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


def scenes(domain: str, personas: int, group: int, turns: int, seed: int, setting: dict):
    """`personas` scenes, each repeated `group` times (rollouts of one persona share a scene)."""
    out = []
    for i in range(personas):
        sc = scene(random.Random(f"{seed}:{domain}:scene:{i}"), turns, setting)
        out += [(f"roll-{domain}-{seed}-{i:05d}-{g}", i, sc) for g in range(group)]
    return out


def next_prompt(tok, persona: str, partner_lines: list[str], eot: str, ended_last: bool | None) -> str:
    """The template text between the last reply's sampled ids and the next reply: rendered with a
    sentinel in place of every earlier reply, cut after the last one. When the last reply ended
    with the marker itself (its sampled stop token), the marker is not written again."""
    msgs = [{"role": "system", "content": persona}]
    for t, line in enumerate(partner_lines):
        msgs.append({"role": "user", "content": line})
        if t < len(partner_lines) - 1:
            msgs.append({"role": "assistant", "content": sentinel(t)})
    text = tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
    if len(partner_lines) > 1:
        last = sentinel(len(partner_lines) - 2)
        text = text[text.index(last) + len(last):]
        if ended_last and text.startswith(eot):
            text = text[len(eot):]
    return text


def _eos_ids(model, tok) -> set[int]:
    ids = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids = set(ids if isinstance(ids, (list, tuple)) else [ids] if ids is not None else [])
    return ids | ({tok.eos_token_id} if tok.eos_token_id is not None else set())


@torch.no_grad()
def play(model, tok, episodes, domain: str, gen: GenerationConfig, seed: int, judge: SimJudge,
         with_tokens: bool = False):
    """Generate every episode's replies turn by turn; returns judged Dialogues (same order), and
    with with_tokens=True also each dialogue's Rollout."""
    device = next(model.parameters()).device
    torch.manual_seed(seed)
    was_training = model.training
    model.eval()
    eot, eos, pad = end_of_turn_marker(tok), _eos_ids(model, tok), tok.pad_token_id
    dialogues, rollouts = [], []
    for start in range(0, len(episodes), gen.batch_size):
        batch = episodes[start:start + gen.batch_size]
        rolls = [Rollout() for _ in batch]
        replies = [[] for _ in batch]
        for t in range(len(batch[0][2][3])):
            for r, (_, _, sc) in zip(rolls, batch):
                # the marker is in the context already when the reply's own stop token IS the marker
                ended = bool(r.ended) and r.ended[-1] and tok.decode(r.input_ids[-1:]) == eot
                text = next_prompt(tok, sc[0].backstory(), sc[3][:t + 1], eot, ended)
                r.extend(tok(text, add_special_tokens=False)["input_ids"])
            width = max(len(r.input_ids) for r in rolls)
            ids = torch.full((len(rolls), width), pad, dtype=torch.long)
            attn = torch.zeros_like(ids)
            for i, r in enumerate(rolls):  # left padding: every row's next token is at the end
                ids[i, width - len(r.input_ids):] = torch.tensor(r.input_ids)
                attn[i, width - len(r.input_ids):] = 1
            sample = gen.temperature > 0
            out = model.generate(input_ids=ids.to(device), attention_mask=attn.to(device),
                                 max_new_tokens=gen.max_new_tokens, do_sample=sample,
                                 temperature=gen.temperature if sample else None, top_p=gen.top_p if sample else None,
                                 pad_token_id=pad)
            for i, r in enumerate(rolls):
                new = out[i, width:].tolist()
                stop = next((j for j, x in enumerate(new) if x in eos), None)
                sampled = new if stop is None else new[:stop + 1]  # its end token is its own
                r.extend(sampled, turn=t)
                r.ended.append(stop is not None)
                replies[i].append(as_text(tok.decode(sampled, skip_special_tokens=True).strip()))
        for (did, _, (persona, windows, _, partner)), r in zip(batch, replies):
            dialogues.append(judge.judge_dialogue(to_dialogue(did, domain, persona, windows, partner, r)))
        rollouts += rolls
    model.train(was_training)
    return (dialogues, rollouts) if with_tokens else dialogues


def rollout_arrays(r: Rollout) -> tuple[np.ndarray, np.ndarray]:
    """(input_ids, turn_index) of a rollout in the training layout of ppg build."""
    return np.asarray(r.input_ids, dtype=np.int64), np.asarray(r.turn_index, dtype=np.int64)


def rewards_tensor(dialogues) -> torch.Tensor:
    """[B, T] per-turn rewards of the persona speaker (every rollout has the same T)."""
    return torch.tensor([[ln.reward for ln in d.turns(SPEAKER)] for d in dialogues], dtype=torch.float32)
