"""The canonical dialogue format (docs/data-format.md): JSON Lines, one dialogue per line.

A line is any utterance; a turn is a line of an evaluated (trained) speaker, and turn t is that
speaker's t-th line, 0-based. Rewards are per line in [0, 1]; null means no verdict (unknown),
which becomes NaN in tensors and is never read as 0 or 1.
"""

import json
import math
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator


MAX_LINE_CHARS = 20_000
"""Longest utterance accepted: a longer one is a broken record, not a line of dialogue."""


class DataError(ValueError):
    """Bad input, with the file, record and field it was found in."""


class Line(BaseModel):
    model_config = ConfigDict(extra="allow")
    speaker: str = Field(min_length=1, strict=True)
    text: str = Field(max_length=MAX_LINE_CHARS, strict=True)
    reward: float | None = Field(default=None, strict=True)
    """Judge reward in [0, 1]; null = no verdict (unknown)."""
    judge: dict | None = None
    """Raw judge output kept for audit: {"prompt_to_line": str|null, "line_to_line": [int]|null}."""

    @field_validator("reward")
    @classmethod
    def _reward_in_unit_interval(cls, v):
        if v is not None and not (math.isfinite(v) and 0.0 <= v <= 1.0):
            raise ValueError(f"reward must be in [0, 1] or null, got {v}")
        return v


class Dialogue(BaseModel):
    model_config = ConfigDict(extra="allow")
    dialogue_id: str = Field(min_length=1, strict=True)
    domain: str = Field(min_length=1, strict=True)
    source: str = Field(min_length=1, strict=True)
    personas: dict[str, str]
    """Backstory text per speaker."""
    evaluated_speakers: list[str]
    """Speakers whose lines are turns: trained and judged (empty for a corpus without personas)."""
    lines: list[Line]
    meta: dict = Field(default_factory=dict)
    """Free-form; meta.segment_starts = {speaker: [turn indices]} gives the segment policy's
    partition of that speaker's turns (must hold 0)."""

    @model_validator(mode="after")
    def _speakers_known(self):
        for s in self.evaluated_speakers:
            if s not in self.personas:
                raise ValueError(f"evaluated speaker {s!r} has no entry in personas")
        return self

    @field_validator("evaluated_speakers")
    @classmethod
    def _unique(cls, v):
        if len(set(v)) != len(v):
            raise ValueError(f"evaluated speakers repeat: {v}")
        return v

    def turns(self, speaker: str) -> list[Line]:
        """The speaker's lines in order: turn t is turns(speaker)[t]."""
        return [ln for ln in self.lines if ln.speaker == speaker]

    def segment_starts(self, speaker: str) -> list[int] | None:
        starts = self.meta.get("segment_starts", {}).get(speaker)
        if starts is None:
            return None
        n = len(self.turns(speaker))
        if not starts or starts[0] != 0 or sorted(set(starts)) != starts or starts[-1] >= max(n, 1):
            raise ValueError(f"meta.segment_starts[{speaker!r}] must be increasing turn indices "
                             f"starting at 0 and below {n}, got {starts}")
        return starts


def read_dialogues(path: str | Path) -> list[Dialogue]:
    """Parse a canonical JSONL file; any bad record raises DataError naming file, line, field."""
    path = Path(path)
    out, seen = [], {}
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 at byte {e.start}") from None
    except OSError as e:
        raise DataError(f"{path}: cannot read: {e}") from None
    for no, raw in enumerate(text.splitlines(), 1):
        if not raw.strip():
            continue
        where = f"{path}:{no}"
        try:
            obj = json.loads(raw)
        except json.JSONDecodeError as e:
            raise DataError(f"{where}: not valid JSON: {e}") from e
        if isinstance(obj, dict) and isinstance(obj.get("dialogue_id"), str):
            where += f" (dialogue_id={obj['dialogue_id']!r})"
        try:
            d = Dialogue.model_validate(obj)
        except ValidationError as e:
            err = e.errors()[0]
            field = ".".join(str(p) for p in err["loc"]) or "record"
            raise DataError(f"{where}: field {field}: {err['msg']}") from None
        if d.dialogue_id in seen:
            raise DataError(f"{where}: field dialogue_id: duplicate of line {seen[d.dialogue_id]}")
        seen[d.dialogue_id] = no
        out.append(d)
    return out


def write_dialogues(path: str | Path, dialogues: list[Dialogue]) -> None:
    """Write canonical JSONL atomically (temp file + rename), re-validating every record."""
    from ppg.io import atomic_open

    with atomic_open(path) as f:
        for d in dialogues:
            f.write(Dialogue.model_validate(d.model_dump()).model_dump_json(exclude_none=False) + "\n")
