"""Dialogues -> the [B, T] turn tensors ppg.returns works on: one row per (dialogue, speaker)."""

import hashlib
from typing import NamedTuple

import torch

from ppg.data.schema import DataError, Dialogue


def persona_id(domain: str, persona: str) -> str:
    """One persona: its domain and backstory text (outer whitespace aside). The unit persona groups,
    splits and a reward model's training personas are counted in."""
    return f"{domain}\0{persona.strip()}"


def persona_key(domain: str, persona: str) -> str:
    """A short key of persona_id: what a reward model's card lists (a backstory may be long)."""
    return hashlib.sha256(persona_id(domain, persona).encode()).hexdigest()[:16]


def persona_groups(dialogues: list[Dialogue]) -> list[int]:
    """Group id per dialogue: dialogues linked by a shared evaluated persona text (transitively)
    share a group, so no persona can sit in two splits."""
    parent: dict[str, str] = {}

    def find(x):
        while parent.setdefault(x, x) != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    keys = []
    for d in dialogues:
        ps = [persona_id(d.domain, d.personas[s]) for s in d.evaluated_speakers]
        for p in ps[1:]:
            parent[find(p)] = find(ps[0])
        keys.append(ps[0])
    roots = [find(k) for k in keys]
    ids = {r: i for i, r in enumerate(dict.fromkeys(roots))}
    return [ids[r] for r in roots]


class TurnBatch(NamedTuple):
    keys: list[tuple[str, str]]  # (dialogue_id, speaker) of each row
    rewards: torch.Tensor  # float32 [B, T], NaN = no verdict, 0 at padding
    mask: torch.Tensor  # bool [B, T], left-aligned
    segment_starts: torch.Tensor  # bool [B, T]: True where a segment starts
    groups: torch.Tensor  # long [B]: the persona group of each row's dialogue (persona_groups)
    kind_names: list[list[str]]  # each row's meta.kind per turn ("" where none is given; codes: turn_kind_codes)


def turn_kind_codes(names: list[list[str]], T: int) -> torch.Tensor:
    """long [B, T] codes of per-turn kind names ("" = none given: a kind of its own), the same
    name the same code within one call; 0 at padding."""
    code = {n: i for i, n in enumerate(sorted({n for row in names for n in row}))}
    out = torch.zeros(len(names), T, dtype=torch.long)
    for b, row in enumerate(names):
        out[b, :len(row)] = torch.tensor([code[n] for n in row], dtype=torch.long)
    return out


def turn_batch(dialogues: list[Dialogue], segments: dict) -> TurnBatch:
    """segments: {length: L} or {from: meta.segment_starts} (ppg.config.ReturnsConfig)."""
    dialogues = [d for d in dialogues if d.evaluated_speakers]
    rows = [(d, s) for d in dialogues for s in d.evaluated_speakers]
    T = max((len(d.turns(s)) for d, s in rows), default=0)
    B = len(rows)
    rewards = torch.zeros(B, T)
    mask = torch.zeros(B, T, dtype=torch.bool)
    starts = torch.zeros(B, T, dtype=torch.bool)
    group_of = dict(zip((d.dialogue_id for d in dialogues), persona_groups(dialogues)))
    groups = torch.zeros(B, dtype=torch.long)
    kinds = []
    for b, (d, s) in enumerate(rows):
        turns = d.turns(s)
        kinds.append([ln.meta.get("kind", "") for ln in turns])
        n = len(turns)
        rewards[b, :n] = torch.tensor([float("nan") if ln.reward is None else ln.reward for ln in turns])
        mask[b, :n] = True
        if "length" in segments:
            starts[b, :n] = torch.arange(n) % segments["length"] == 0
        else:
            seg = d.segment_starts(s)
            if seg is None and n:
                raise DataError(f"dialogue {d.dialogue_id!r}: field meta.segment_starts: no entry for "
                                f"speaker {s!r} (returns.segments asks for it)")
            starts[b, seg or []] = True
        groups[b] = group_of[d.dialogue_id]
    return TurnBatch([(d.dialogue_id, s) for d, s in rows], rewards, mask, starts, groups, kinds)
