"""Importers: outside formats -> canonical dialogues (ppg.data.schema). `ppg import` drives them.

Each importer yields Dialogue objects and fills an ImportStats; any bad record raises DataError
naming the file, the record and the field. Nothing is written until every record has parsed.
"""

import csv
import json
import re
from collections import Counter, defaultdict
from pathlib import Path

from pydantic import ValidationError

from ppg.data.schema import MAX_LINE_CHARS, DataError, Dialogue, read_dialogues

FORMATS = ("consistent-llms", "synthetic-persona-chat", "chitchat", "jsonl")
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


def _load_json(path: Path):
    try:
        return json.loads(path.read_bytes().decode("utf-8"))
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 at byte {e.start}") from None
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: not valid JSON: {e}") from None
    except OSError as e:
        raise DataError(f"{path}: cannot read: {e}") from None


def _dialogue(path, rec, obj) -> Dialogue:
    try:
        return Dialogue.model_validate(obj)
    except ValidationError as e:
        err = e.errors()[0]
        _fail(path, rec, ".".join(map(str, err["loc"])) or "record", err["msg"])


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
        out[e[0]] = e[1]
    return out


def import_consistent_llms(path: Path, stats: ImportStats):
    """The JSON lists of abdulhaim/consistent-LLMs (see ../shared/data/consistent-llms/README.md).
    Speakers are P1 (even lines) and P2 (odd lines), by index, whatever the name prefix says."""
    data = _load_json(path)
    if not isinstance(data, list):
        raise DataError(f"{path}: expected a JSON list of dialogues, got {type(data).__name__}")
    for rec, obj in enumerate(data):
        if not isinstance(obj, dict):
            _fail(path, rec, "record", "expected an object")
        conv = obj.get("conversation")
        if not isinstance(conv, list) or not conv:
            _fail(path, rec, "conversation", "missing or empty")
        texts = []
        for i, entry in enumerate(conv):
            if not (isinstance(entry, list) and len(entry) == 2 and isinstance(entry[1], str)):
                _fail(path, rec, f"conversation[{i}]", "expected [line_index, text]")
            if entry[0] != i:
                _fail(path, rec, f"conversation[{i}]", f"line index {entry[0]!r}, expected {i}")
            texts.append(entry[1])
        for p in ("P1", "P2", "task_name"):
            if not isinstance(obj.get(p), str):
                _fail(path, rec, p, "missing or not a string")
        prompt = _indexed_texts(path, rec, obj, "eval_prompt_consistency", len(conv))
        index = _indexed_texts(path, rec, obj, "eval_index_consistency", len(conv))
        domain = obj["task_name"].strip().lower()
        speakers = ["P1", "P2"]
        evaluated = sorted({speakers[i % 2] for i in prompt})
        lines = []
        for i, text in enumerate(texts):
            m = NAME_PREFIX.match(text)
            body = text[m.end():] if m else text
            if len(body) > MAX_LINE_CHARS:
                _fail(path, rec, f"conversation[{i}]", f"{len(body)} characters (max {MAX_LINE_CHARS})")
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
        yield _dialogue(path, rec, {
            "dialogue_id": f"{path.stem}:{rec}", "domain": domain, "source": "consistent-llms",
            "personas": {"P1": _persona(obj["P1"]), "P2": _persona(obj["P2"])},
            "evaluated_speakers": evaluated, "lines": lines,
            "meta": {"file": path.name, "record": rec, "rounds": obj.get("rounds"),
                     "topic": obj.get("topic"), "grade": obj.get("grade"),
                     "timestamp": obj.get("timestamp")}})


def import_synthetic_persona_chat(path: Path, stats: ImportStats):
    """Google's Synthetic-Persona-Chat CSV: user 1 personas, user 2 personas, a conversation of
    `User 1:` / `User 2:` lines. No rewards: lines are judged later (null until then)."""
    try:
        rows = list(csv.DictReader(path.read_text(encoding="utf-8").splitlines(keepends=True)))
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 at byte {e.start}") from None
    except (OSError, csv.Error) as e:
        raise DataError(f"{path}: cannot read CSV: {e}") from None
    cols = {c.lower().strip(): c for c in (rows[0].keys() if rows else [])}
    need = {"user 1 personas": None, "user 2 personas": None}
    conv_col = next((cols[c] for c in cols if "conversation" in c), None)
    for c in need:
        if c not in cols:
            raise DataError(f"{path}: missing column {c!r} (have {sorted(cols)})")
    if conv_col is None:
        raise DataError(f"{path}: missing a conversation column (have {sorted(cols)})")
    for rec, row in enumerate(rows):
        lines = []
        for j, raw in enumerate(x for x in (row[conv_col] or "").splitlines() if x.strip()):
            m = re.match(r"\s*User ([12])\s*:\s*(.*)$", raw)
            if not m:
                _fail(path, rec, f"{conv_col}[{j}]", f"expected 'User 1:' or 'User 2:', got {raw[:40]!r}")
            lines.append({"speaker": f"user{m.group(1)}", "text": m.group(2).strip(), "reward": None})
        if not lines:
            _fail(path, rec, conv_col, "empty conversation")
        personas = {f"user{k}": " ".join(s.strip() for s in (row[cols[f"user {k} personas"]] or "")
                                         .splitlines() if s.strip()) for k in (1, 2)}
        stats.add("chatting", dialogues=1, lines=len(lines), judged_lines=0)
        yield _dialogue(path, rec, {
            "dialogue_id": f"{path.stem}:{rec}", "domain": "chatting", "source": "synthetic-persona-chat",
            "personas": personas, "evaluated_speakers": ["user1", "user2"], "lines": lines,
            "meta": {"file": path.name, "record": rec}})


def import_chitchat(path: Path | None, stats: ImportStats):
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


def import_jsonl(path: Path, stats: ImportStats):
    """The canonical format itself, validated."""
    for d in read_dialogues(path):
        turns = [ln for ln in d.lines if ln.speaker in d.evaluated_speakers]
        stats.add(d.domain, dialogues=1, lines=len(d.lines), judged_lines=sum(ln.reward is not None
                                                                               for ln in turns),
                  verdict_null=sum(ln.reward is None for ln in turns))
        yield d


IMPORTERS = {"consistent-llms": import_consistent_llms,
             "synthetic-persona-chat": import_synthetic_persona_chat,
             "chitchat": import_chitchat, "jsonl": import_jsonl}


def _files(path: Path) -> list[Path]:
    """A file, or the data files (*.jsonl, *.json) of a folder such as data/incoming, sorted."""
    if not path.is_dir():
        return [path]
    return sorted(f for f in path.iterdir() if f.suffix in (".jsonl", ".json") and not f.name.startswith("."))


def parse_source(spec: str) -> tuple[str, list[Path]]:
    """data.source FORMAT:PATH[,PATH...] -> (format, paths); `simulator` -> ("simulator", [])."""
    if spec == "simulator":
        return "simulator", []
    fmt, sep, joined = spec.partition(":")
    if not sep or fmt not in IMPORTERS:
        raise DataError(f"data.source: expected simulator or FORMAT:PATH[,PATH...] with FORMAT one of "
                        f"{FORMATS}, got {spec!r}")
    return fmt, [Path(x) for x in joined.split(",") if x]


def source_files(fmt: str, paths: list[Path]) -> list[Path]:
    """Every file an import of these paths reads (folders expanded as import_paths does)."""
    if fmt == "chitchat":
        import chitchat_dataset

        paths = [Path(chitchat_dataset.__file__).with_name("dataset.json") if str(p) == "-" else p for p in paths]
    return [f for p in paths for f in _files(Path(p))]


def source_manifest(spec: str) -> dict:
    """What data.source reads, by content: {source, files: [{path, bytes, sha256}]}. The `sources`
    stage writes it and `import` depends on it, so editing, adding or removing a file that the
    source names (anywhere, not only under data/incoming) re-runs import and what follows."""
    import hashlib

    fmt, paths = parse_source(spec)
    files = []
    for f in source_files(fmt, paths):
        if not f.is_file():
            raise DataError(f"data.source: {f}: no such file (from {spec!r})")
        with open(f, "rb") as fh:
            files.append({"path": str(f), "bytes": f.stat().st_size,
                          "sha256": hashlib.file_digest(fh, "sha256").hexdigest()})
    return {"source": spec, "files": files}


def import_paths(fmt: str, paths: list[Path]) -> tuple[list[Dialogue], dict]:
    """Parse every path fully (all or nothing); duplicate dialogue ids across files are errors."""
    if fmt not in IMPORTERS:
        raise DataError(f"format: {fmt!r} is not one of {FORMATS}")
    stats, out, seen = ImportStats(), [], {}
    for p in source_files(fmt, paths):
        for d in IMPORTERS[fmt](Path(p), stats):
            if d.dialogue_id in seen:
                raise DataError(f"{p}: field dialogue_id: {d.dialogue_id!r} already imported from {seen[d.dialogue_id]}")
            seen[d.dialogue_id] = p
            out.append(d)
    return out, stats.summary()
