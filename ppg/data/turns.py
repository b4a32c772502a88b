"""Dialogues -> the [B, T] turn tensors ppg.returns works on: one row per (dialogue, speaker)."""

from typing import NamedTuple

import torch

from ppg.data.schema import DataError, Dialogue


class TurnBatch(NamedTuple):
    keys: list[tuple[str, str]]  # (dialogue_id, speaker) of each row
    rewards: torch.Tensor  # float32 [B, T], NaN = no verdict, 0 at padding
    mask: torch.Tensor  # bool [B, T], left-aligned
    segment_starts: torch.Tensor  # bool [B, T]: True where a segment starts
    groups: torch.Tensor  # long [B]: rows sharing a persona text share a group


def turn_batch(dialogues: list[Dialogue], segments: dict) -> TurnBatch:
    """segments: {length: L} or {from: meta.segment_starts} (ppg.config.ReturnsConfig)."""
    rows = [(d, s) for d in dialogues for s in d.evaluated_speakers]
    T = max((len(d.turns(s)) for d, s in rows), default=0)
    B = len(rows)
    rewards = torch.zeros(B, T)
    mask = torch.zeros(B, T, dtype=torch.bool)
    starts = torch.zeros(B, T, dtype=torch.bool)
    personas: dict[str, int] = {}
    groups = torch.zeros(B, dtype=torch.long)
    for b, (d, s) in enumerate(rows):
        turns = d.turns(s)
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
        groups[b] = personas.setdefault(d.personas[s], len(personas))
    return TurnBatch([(d.dialogue_id, s) for d, s in rows], rewards, mask, starts, groups)
