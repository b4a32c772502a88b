"""The canonical dialogue format (docs/data-format.md): JSON Lines, one dialogue per line.

A line is any utterance; a turn is a line of an evaluated (trained) speaker, and turn t is that
speaker's t-th line, 0-based. Rewards are per line in [0, 1]; null means no verdict (unknown),
which becomes NaN in tensors and is never read as 0 or 1.
"""

import json
import math
import re
import unicodedata
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

MAX_LINE_CHARS = 20_000
"""Longest utterance accepted: a longer one is a broken record, not a line of dialogue."""
MAX_JSON_DEPTH = 64
"""Deepest nesting of a JSON record: the format needs 5 levels; deeper is a broken or hostile file."""
# C0 controls other than tab, newline and carriage return, DEL, C1 controls other than NEL (a line
# break some editors write): never part of an utterance; ESC also starts terminal escape sequences
CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\x80-\x84\x86-\x9f]")
LINE_BREAKS = {"\u2028": "\\u2028", "\u2029": "\\u2029", "\x85": "\\u0085"}  # written escaped


class DataError(ValueError):
    """Bad input, with the file, record and field it was found in."""


def check_text(v: str, visible: bool = True) -> str:
    """An utterance is text: no control characters (NUL, escape sequences, ...) and, when not
    empty, at least one visible character (not only zero-width or other format characters)."""
    bad = CONTROL.search(v)
    if bad:
        raise ValueError(f"control character U+{ord(bad.group()):04X} at position {bad.start()} "
                         f"(not text: NUL, terminal escapes and the like are refused)")
    if visible and v and all(c.isspace() or unicodedata.category(c) in ("Cf", "Mn", "Zs", "Zl", "Zp") for c in v):
        raise ValueError("no visible character (only spaces or zero-width/format characters)")
    return v


def as_text(v: str) -> str:
    """Generated text made an utterance check_text accepts: control characters become U+FFFD and
    a reply with nothing visible becomes "" (a model's output is not refused, it is shown)."""
    v = CONTROL.sub("\ufffd", v)
    try:
        return check_text(v)
    except ValueError:
        return ""


class Line(BaseModel):
    model_config = ConfigDict(extra="forbid")
    speaker: str = Field(min_length=1, strict=True)
    text: str = Field(max_length=MAX_LINE_CHARS, strict=True)
    reward: float | None = Field(default=None, strict=True)
    """Judge reward in [0, 1]; null = no verdict (unknown)."""
    judge: dict | None = None
    """Judge output kept for audit: what the judge said (e.g. {"prompt_to_line": str|null,
    "line_to_line": [int]|null} as imported), and from ppg's judges also the verdicts `persona` and
    `commitment` (1, 0 or null) that evaluation reads (ppg.judges.base)."""
    name: str | None = None
    """The name prefix the source wrote before the text (`Teacher`); never decides the speaker."""
    meta: dict = Field(default_factory=dict)
    """Free-form per-line data, kept as written. meta.kind, when given, is a non-empty string
    naming the kind of turn (the simulator's filler / ask-stated / ask-open / probe): the key
    of the turn_kind baseline, read from the context, never from the reply."""

    @field_validator("meta")
    @classmethod
    def _kind_is_a_name(cls, v):
        if "kind" in v and not (isinstance(v["kind"], str) and v["kind"].strip()):
            raise ValueError(f"meta.kind must be a non-empty string (the turn's kind), got {v['kind']!r}")
        return v

    @field_validator("reward")
    @classmethod
    def _reward_in_unit_interval(cls, v):
        if v is not None and not (math.isfinite(v) and 0.0 <= v <= 1.0):
            raise ValueError(f"reward must be in [0, 1] or null, got {v}")
        return v

    @field_validator("text")
    @classmethod
    def _is_text(cls, v):
        return check_text(v)


class Dialogue(BaseModel):
    model_config = ConfigDict(extra="forbid")
    dialogue_id: str = Field(min_length=1, strict=True)
    domain: str = Field(min_length=1, strict=True)
    source: str = Field(min_length=1, strict=True)
    personas: dict[str, str]
    """Backstory text per speaker."""
    evaluated_speakers: list[str]
    """Speakers whose lines are turns: trained and judged (empty only for a corpus without
    personas, e.g. chitchat)."""
    lines: list[Line] = Field(min_length=1)
    meta: dict = Field(default_factory=dict)
    """Free-form; meta.segment_starts = {speaker: [turn indices]} gives the segment policy's
    partition of that speaker's turns (increasing integers from 0, below its turn count)."""

    @field_validator("personas")
    @classmethod
    def _personas_are_text(cls, v):
        for speaker, text in v.items():
            try:
                check_text(text, visible=False)  # blank is allowed here; an evaluated speaker's is refused below
            except ValueError as e:
                raise ValueError(f"personas.{speaker}: {e}") from None
        return v

    @field_validator("evaluated_speakers")
    @classmethod
    def _unique(cls, v):
        if len(set(v)) != len(v):
            raise ValueError(f"evaluated speakers repeat: {v}")
        return v

    @model_validator(mode="after")
    def _speakers_match(self):
        if not self.evaluated_speakers and any(p.strip() for p in self.personas.values()):
            raise ValueError(f"evaluated_speakers is empty but personas has {sorted(self.personas)}: say "
                             f"whose lines are the turns to train and judge")
        spoken = list(dict.fromkeys(ln.speaker for ln in self.lines))
        for s in self.evaluated_speakers:
            if s not in self.personas:
                raise ValueError(f"evaluated speaker {s!r} has no entry in personas")
            if not self.personas[s].strip():
                raise ValueError(f"personas.{s}: empty backstory for an evaluated speaker")
            if s not in spoken:
                near = [x for x in spoken if x.strip().casefold() == s.strip().casefold()]
                hint = (f"; {near[0]!r} differs only in case or spaces" if near else "")
                raise ValueError(f"evaluated speaker {s!r} has no line (lines are by {spoken}; names must "
                                 f"match exactly{hint})")
        self._check_segments()
        return self

    def _check_segments(self):
        seg = self.meta.get("segment_starts")
        if seg is None:
            return
        if not isinstance(seg, dict):
            raise ValueError("meta.segment_starts: expected {speaker: [turn indices]}")
        for s, starts in seg.items():
            where = f"meta.segment_starts.{s}"
            if s not in self.evaluated_speakers:
                raise ValueError(f"{where}: {s!r} is not an evaluated speaker")
            n = len(self.turns(s))
            if not (isinstance(starts, list) and starts and all(type(x) is int for x in starts)):
                raise ValueError(f"{where}: expected a non-empty list of integers, got {starts!r}")
            if starts[0] != 0 or any(b <= a for a, b in zip(starts, starts[1:])) or starts[-1] >= n:
                raise ValueError(f"{where}: must be increasing turn indices starting at 0 and below {n} "
                                 f"(the speaker's turns), got {starts}")

    def turns(self, speaker: str) -> list[Line]:
        """The speaker's lines in order: turn t is turns(speaker)[t]."""
        return [ln for ln in self.lines if ln.speaker == speaker]

    def segment_starts(self, speaker: str) -> list[int] | None:
        """Checked when the record was read (_check_segments)."""
        return self.meta.get("segment_starts", {}).get(speaker)


def _unique_keys(pairs):
    keys = [k for k, _ in pairs]
    dup = next((k for k in keys if keys.count(k) > 1), None)
    if dup is not None:
        raise ValueError(f"field {dup}: the key appears twice in one object (the first value would be lost)")
    return dict(pairs)


def _depth(x, limit: int = MAX_JSON_DEPTH) -> int:
    stack, deepest = [(x, 1)], 0
    while stack:
        v, d = stack.pop()
        deepest = max(deepest, d)
        if deepest > limit:
            return deepest
        if isinstance(v, dict):
            stack += [(c, d + 1) for c in v.values()]
        elif isinstance(v, list):
            stack += [(c, d + 1) for c in v]
    return deepest


def load_json(text: str, where: str):
    """json.loads that refuses duplicate keys and absurd nesting, naming where (DataError)."""
    try:
        obj = json.loads(text, object_pairs_hook=_unique_keys)
    except json.JSONDecodeError as e:
        raise DataError(f"{where}: not valid JSON: {e}") from None
    except RecursionError:
        raise DataError(f"{where}: not valid JSON: nested deeper than Python can parse") from None
    except ValueError as e:  # a duplicate key
        raise DataError(f"{where}: {e}") from None
    if _depth(obj) > MAX_JSON_DEPTH:
        raise DataError(f"{where}: JSON nested deeper than {MAX_JSON_DEPTH} levels")
    return obj


def list_item_lines(text: str) -> list[int]:
    """The 1-based line on which each element of a top-level JSON list starts (for errors that
    name a record's line, not only its index); [] when the text is not a list."""
    dec, ws = json.JSONDecoder(), " \t\r\n"
    i = len(text) - len(text.lstrip(ws))
    if not text.startswith("[", i):
        return []
    out, i, line, counted = [], i + 1, 1, 0
    while True:
        while i < len(text) and text[i] in ws + ",":
            i += 1
        if i >= len(text) or text[i] == "]":
            return out
        line += text.count("\n", counted, i)
        counted = i
        out.append(line)
        _, i = dec.raw_decode(text, i)


def decode_utf8(data: bytes, path) -> str:
    """UTF-8 text of a file; a byte-order mark is dropped; a bad byte is named by line and byte."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data[:e.start].count(b"\n") + 1
        raise DataError(f"{path}:{line}: not UTF-8 at byte {e.start}") from None
    return text[1:] if text.startswith("\ufeff") else text


def read_text(path: Path) -> str:
    """A file's text (decode_utf8); an unreadable file is a DataError naming it."""
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise DataError(f"{path}: cannot read: {e}") from None
    return decode_utf8(data, path)


def read_dialogues(path: str | Path) -> list[Dialogue]:
    """Parse a canonical JSONL file; any bad record raises DataError naming file, line, field.
    Records are split on newlines only: U+2028, U+2029 and U+0085 are text inside a string."""
    path = Path(path)
    out, seen = [], {}
    text = read_text(path)
    for no, raw in enumerate(text.split("\n"), 1):
        raw = raw.removesuffix("\r")
        if not raw.strip():
            continue
        where = f"{path}:{no}"
        obj = load_json(raw, where)
        if isinstance(obj, dict) and isinstance(obj.get("dialogue_id"), str):
            where += f" (dialogue_id={obj['dialogue_id']!r})"
        try:
            d = Dialogue.model_validate(obj)
        except ValidationError as e:
            raise DataError(f"{where}: {validation_message(e)}") from None
        if d.dialogue_id in seen:
            raise DataError(f"{where}: field dialogue_id: duplicate of line {seen[d.dialogue_id]}")
        seen[d.dialogue_id] = no
        out.append(d)
    return out


def validation_message(e: ValidationError) -> str:
    """`field PATH: reason` of pydantic's first error (the path as the record spells it)."""
    err = e.errors()[0]
    field = ".".join(str(p) for p in err["loc"]) or "record"
    msg = err["msg"]
    if err["type"] == "extra_forbidden":
        msg = "unknown field (free-form data belongs in meta, or lines[].meta for a line)"
    return f"field {field}: {msg}"


def to_jsonl(d: Dialogue) -> str:
    """One record, re-validated, with the Unicode line breaks escaped: a reader that splits on
    them (str.splitlines) still sees one record per line."""
    text = Dialogue.model_validate(d.model_dump()).model_dump_json(exclude_none=False)
    for raw, escaped in LINE_BREAKS.items():
        text = text.replace(raw, escaped)
    return text


def write_dialogues(path: str | Path, dialogues: list[Dialogue]) -> None:
    """Write canonical JSONL atomically (temp file + rename), re-validating every record."""
    from ppg.io import atomic_open

    with atomic_open(path) as f:
        for d in dialogues:
            f.write(to_jsonl(d) + "\n")
