"""The readers of each data format: outside formats -> canonical dialogues (ppg.data.schema).

Each reader yields Dialogue objects and fills an ImportStats; any bad record raises DataError
naming the file, the record and the field. ppg.data.importers.IMPORTERS lists them (one entry per
format) and drives them: nothing is written until every record has parsed.
"""

import csv
import io
import json
import re
from collections import Counter, defaultdict
from pathlib import Path

from pydantic import ValidationError

from ppg.data.schema import (MAX_LINE_CHARS, DataError, Dialogue, list_item_lines, load_json, read_dialogues,
                             read_text, validation_message)

VERDICT = re.compile(r"\b(YES|NO)\b")
INT_LIST = re.compile(r"\[\s*(?:-?\d+\s*(?:,\s*-?\d+\s*)*)?\]")
NAME_PREFIX = re.compile(r"^\s*([^:\n]{1,60}):\s?")


class ImportStats:
    """Counts per domain: dialogues, lines, judged lines, verdicts, line-to-line outcomes."""

    def __init__(self):
        self.by_domain: dict[str, Counter] = defaultdict(Counter)

    def add(self, domain, **counts):
        self.by_domain[domain].update(counts)

    def summary(self) -> dict:
        total = Counter()
        for c in self.by_domain.values():
            total.update(c)
        return {"total": dict(sorted(total.items())),
                "by_domain": {d: dict(sorted(c.items())) for d, c in sorted(self.by_domain.items())}}


def prompt_verdict(text: str | None) -> float | None:
    """The LAST standalone upper-case YES/NO: YES (contradicts) -> 0, NO -> 1, none -> None."""
    found = VERDICT.findall(text or "")
    return None if not found else (0.0 if found[-1] == "YES" else 1.0)


def conflict_list(text: str) -> list[int] | None:
    """The last bracketed list of integers (`[]` counts); None when there is none."""
    found = INT_LIST.findall(text)
    return json.loads(found[-1].replace(" ", "")) if found else None


def _fail(path, rec, field, msg):
    raise DataError(f"{path}: record {rec}: field {field}: {msg}")


def _load_json(path: Path, with_lines: bool = False):
    text = read_text(path)
    if not text.strip():
        raise DataError(f"{path}: empty file (expected a JSON list of dialogues)")
    data = load_json(text, str(path))
    return (data, list_item_lines(text)) if with_lines else data


def _dialogue(path, rec, obj, fields=None) -> Dialogue:
    """Validate a converted record; `fields` maps a canonical field path back to the one the
    source file spells (lines.3.text -> conversation[3]), so an error names what the user wrote."""
    try:
        return Dialogue.model_validate(obj)
    except ValidationError as e:
        msg = validation_message(e)
        if fields:
            field, _, reason = msg.removeprefix("field ").partition(": ")
            msg = f"field {fields(field) or field}: {reason}"
        raise DataError(f"{path}: record {rec}: {msg}") from None


def _consistent_llms_field(field: str) -> str | None:
    parts = field.split(".")
    if parts[0] == "lines" and len(parts) > 1:
        return f"conversation[{parts[1]}]"
    return {"domain": "task_name", "personas": "P1/P2", "personas.P1": "P1", "personas.P2": "P2"}.get(field)


def _persona(text: str) -> str:
    # chatting backstories arrive JSON-quoted twice ("\"Meet 49-year-old ...\""): unwrap once
    if len(text) >= 2 and text[0] == text[-1] == '"':
        try:
            inner = json.loads(text)
            if isinstance(inner, str):
                return inner.strip()
        except json.JSONDecodeError:
            pass
    return text.strip()


def _indexed_texts(path, rec, obj, field, n_lines):
    """[[line_index, text], ...] -> {index: text}, checking shape and range."""
    entries = obj.get(field, [])
    if not isinstance(entries, list):
        _fail(path, rec, field, "expected a list of [line_index, text]")
    out = {}
    for j, e in enumerate(entries):
        if not (isinstance(e, list) and len(e) == 2 and isinstance(e[0], int) and isinstance(e[1], str)):
            _fail(path, rec, f"{field}[{j}]", "expected [line_index, text]")
        if not 0 <= e[0] < n_lines:
            _fail(path, rec, f"{field}[{j}]", f"line index {e[0]} outside the conversation (0..{n_lines - 1})")
        if e[0] in out and out[e[0]] != e[1]:  # never "last wins": which verdict holds is unknown
            _fail(path, rec, f"{field}[{j}]", f"line index {e[0]} already has a different entry; "
                                              f"conflicting verdicts for one line")
        out[e[0]] = e[1]
    return out


def _known_names(texts: list[str]) -> set[str]:
    """The dialogue's speaker names: a prefix `Name:` on at least half of one speaker's lines (0 =
    even lines, 1 = odd). Only such a prefix is stripped, whichever speaker's line it opens (the
    speaker comes from the index): "Honestly: ..." or a URL keeps its words."""
    known = set()
    for parity in (0, 1):
        mine = [t for i, t in enumerate(texts) if i % 2 == parity]
        names = Counter(m.group(1).strip() for m in map(NAME_PREFIX.match, mine) if m)
        known |= {n for n, c in names.items() if c * 2 >= len(mine)}
    return known


def import_consistent_llms(path: Path, stats: ImportStats, label: str | None = None):
    """The JSON lists of abdulhaim/consistent-LLMs (see ../shared/data/consistent-llms/README.md).
    Speakers are P1 (even lines) and P2 (odd lines), by index, whatever the name prefix says."""
    data, starts = _load_json(path, with_lines=True)
    if not isinstance(data, list):
        raise DataError(f"{path}: expected a JSON list of dialogues, got {type(data).__name__}")
    for rec, obj in enumerate(data):
        where = f"{path}:{starts[rec]}"  # errors name the line the record starts on
        if not isinstance(obj, dict):
            _fail(where, rec, "record", "expected an object")
        conv = obj.get("conversation")
        if not isinstance(conv, list) or not conv:
            _fail(where, rec, "conversation", "missing or empty")
        texts = []
        for i, entry in enumerate(conv):
            if not (isinstance(entry, list) and len(entry) == 2 and isinstance(entry[1], str)):
                _fail(where, rec, f"conversation[{i}]", "expected [line_index, text]")
            if entry[0] != i:
                _fail(where, rec, f"conversation[{i}]", f"line index {entry[0]!r}, expected {i}")
            texts.append(entry[1])
        for p in ("P1", "P2", "task_name"):
            if not isinstance(obj.get(p), str):
                _fail(where, rec, p, "missing or not a string")
        prompt = _indexed_texts(where, rec, obj, "eval_prompt_consistency", len(conv))
        index = _indexed_texts(where, rec, obj, "eval_index_consistency", len(conv))
        domain = obj["task_name"].strip().lower()
        speakers = ["P1", "P2"]
        evaluated = sorted({speakers[i % 2] for i in prompt})
        lines, known = [], _known_names(texts)
        for i, text in enumerate(texts):
            m = NAME_PREFIX.match(text)
            m = m if m and m.group(1).strip() in known else None
            body = text[m.end():] if m else text
            if len(body) > MAX_LINE_CHARS:
                _fail(where, rec, f"conversation[{i}]", f"{len(body)} characters (max {MAX_LINE_CHARS})")
            speaker = speakers[i % 2]
            line = {"speaker": speaker, "text": body.strip(), "name": m.group(1).strip() if m else None,
                    "reward": None, "judge": None}
            if speaker in evaluated:
                verdict = prompt_verdict(prompt.get(i))
                l2l = conflict_list(index[i]) if i in index else None
                status = "ok" if l2l is not None else ("unparseable" if i in index else "no_entry")
                line["reward"] = verdict
                line["judge"] = {"prompt_to_line": prompt.get(i), "line_to_line": l2l,
                                 "line_to_line_status": status}
                stats.add(domain, judged_lines=int(i in prompt),
                          verdict_yes=int(verdict == 0.0), verdict_no=int(verdict == 1.0),
                          verdict_null=int(verdict is None and i in prompt),
                          unjudged_turns=int(i not in prompt), **{f"line_to_line_{status}": 1})
            lines.append(line)
        stats.add(domain, dialogues=1, lines=len(lines))
        yield _dialogue(where, rec, fields=_consistent_llms_field, obj={
            "dialogue_id": f"{label or path.stem}:{rec}", "domain": domain, "source": "consistent-llms",
            "personas": {"P1": _persona(obj["P1"]), "P2": _persona(obj["P2"])},
            "evaluated_speakers": evaluated, "lines": lines,
            "meta": {"file": f"{label or path.stem}{path.suffix}", "record": rec, "rounds": obj.get("rounds"),
                     "topic": obj.get("topic"), "grade": obj.get("grade"),
                     "timestamp": obj.get("timestamp")}})


def import_synthetic_persona_chat(path: Path, stats: ImportStats, label: str | None = None):
    """Google's Synthetic-Persona-Chat CSV: user 1 personas, user 2 personas, a conversation of
    `User 1:` / `User 2:` lines. No rewards: lines are judged later (null until then)."""
    reader = csv.DictReader(io.StringIO(read_text(path), newline=""))  # a byte-order mark is gone already
    rows, at = [], []
    try:
        for row in reader:
            if None in row:  # DictReader files surplus fields under the key None
                raise DataError(f"{path}:{reader.line_num}: record {len(rows)}: {len(row[None])} more field(s) than "
                                f"the header's {len(reader.fieldnames)} columns")
            rows.append(row)
            at.append(reader.line_num)
    except csv.Error as e:
        raise DataError(f"{path}:{reader.line_num}: cannot read CSV: {e}") from None
    if not reader.fieldnames:
        raise DataError(f"{path}: empty file (expected a CSV header)")
    cols = {c.lower().strip(): c for c in reader.fieldnames}
    need = {"user 1 personas": None, "user 2 personas": None}
    conv_col = next((cols[c] for c in cols if "conversation" in c), None)
    for c in need:
        if c not in cols:
            raise DataError(f"{path}: missing column {c!r} (have {sorted(cols)})")
    if conv_col is None:
        raise DataError(f"{path}: missing a conversation column (have {sorted(cols)})")
    for rec, row in enumerate(rows):
        lines = []
        for j, raw in enumerate(x.removesuffix("\r") for x in (row[conv_col] or "").split("\n") if x.strip()):
            m = re.match(r"\s*User ([12])\s*:\s*(.*)$", raw, re.S)
            if not m:
                _fail(f"{path}:{at[rec]}", rec, f"{conv_col}[{j}]",
                      f"expected 'User 1:' or 'User 2:', got {raw[:40]!r}")
            lines.append({"speaker": f"user{m.group(1)}", "text": m.group(2).strip(), "reward": None})
        if not lines:
            _fail(f"{path}:{at[rec]}", rec, conv_col, "empty conversation")
        personas = {f"user{k}": " ".join(s.strip() for s in (row[cols[f"user {k} personas"]] or "")
                                         .split("\n") if s.strip()) for k in (1, 2)}
        stats.add("chatting", dialogues=1, lines=len(lines), judged_lines=0)
        yield _dialogue(path, rec, {
            "dialogue_id": f"{label or path.stem}:{rec}", "domain": "chatting", "source": "synthetic-persona-chat",
            "personas": personas, "evaluated_speakers": ["user1", "user2"], "lines": lines,
            "meta": {"file": f"{label or path.stem}{path.suffix}", "record": rec}})


def import_chitchat(path: Path | None, stats: ImportStats, label: str | None = None):
    """BYU Chit-Chat (PyPI `chitchat-dataset`, MIT): real open-domain chats, no personas and no
    rewards, so no evaluated speaker: partner lines and warm-up text. PATH '-' = the packaged file.
    Conversations with a message over MAX_LINE_CHARS (spam) are skipped and counted."""
    if path is None or str(path) == "-":
        import chitchat_dataset

        path = Path(chitchat_dataset.__file__).with_name("dataset.json")
    data = _load_json(path)
    if not isinstance(data, dict):
        raise DataError(f"{path}: expected an object of conversations")
    for cid, conv in data.items():
        msgs = conv.get("messages") if isinstance(conv, dict) else None
        if not isinstance(msgs, list) or not msgs:
            _fail(path, cid, "messages", "missing or empty")
        senders, lines = {}, []
        for j, group in enumerate(msgs):
            if not (isinstance(group, list) and group and all(isinstance(u, dict) and isinstance(
                    u.get("text"), str) for u in group)):
                _fail(path, cid, f"messages[{j}]", "expected a list of {text, sender}")
            who = senders.setdefault(group[0].get("sender"), "AB"[len(senders) % 2])
            lines.append({"speaker": who, "text": " ".join(u["text"].strip() for u in group), "reward": None})
        if max(len(ln["text"]) for ln in lines) > MAX_LINE_CHARS:
            stats.add("chitchat", skipped_overlong=1)  # the corpus holds a few spam walls of text
            continue
        stats.add("chitchat", dialogues=1, lines=len(lines), judged_lines=0)
        yield _dialogue(path, cid, {
            "dialogue_id": f"chitchat:{cid}", "domain": "chitchat", "source": "chitchat",
            "personas": {}, "evaluated_speakers": [], "lines": lines,
            "meta": {"prompt": conv.get("prompt"), "ratings": conv.get("ratings")}})


def import_jsonl(path: Path, stats: ImportStats, label: str | None = None):
    """The canonical format itself, validated."""
    for d in read_dialogues(path):
        turns = [ln for ln in d.lines if ln.speaker in d.evaluated_speakers]
        stats.add(d.domain, dialogues=1, lines=len(d.lines), judged_lines=sum(ln.reward is not None
                                                                               for ln in turns),
                  verdict_null=sum(ln.reward is None for ln in turns))
        yield d
