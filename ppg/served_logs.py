"""The served model's logs as `ppg monitor` reads them: what the server wrote, record by record.

A log is read while the server is still writing it, so one bad record must not cost the day's
file. In the canonical JSONL format (what `ppg serve-model` writes) each line is a record of its
own: a line that cannot be used is skipped and counted by reason, the rest is judged.

    incomplete        the last line has no newline yet (the server is writing it): left for the
                      next check, which reads it whole (reported as `pending` bytes)
    not_utf8          the line is not UTF-8
    not_json          the line is not a JSON object
    no_persona        a chat without a system message: its evaluated speaker has no persona to
                      be consistent with (what the server logs for it), so there is nothing to judge
    invalid           any other record the canonical format refuses (the first reason is kept)
    no_model_version  meta.model_version does not name NAME/VERSION
    repeated          the same model version and dialogue_id, or the same conversation word for
                      word, already read in this check

Each file is read from where the last check stopped (`progress`: its byte offset and a hash of
the bytes before it; a file that shrank or whose head changed was rotated or rewritten and is
read from the start), so nothing is read twice and nothing is lost; the caller stores `progress`
only once the batch is judged. Other formats (a Consistent-LLMs JSON list) are whole files: one
that does not import is skipped, counted (`unreadable_file`) and read again once it changes.
Symlinks that lead nowhere (dangling or looping) are counted, not followed.
"""

import hashlib
import json
from collections import Counter
from pathlib import Path

from pydantic import ValidationError

from ppg.data.schema import DataError, Dialogue, load_json, validation_message
from ppg.io import content_hash


def head_hash(path: Path, n: int) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read(n)).hexdigest()[:16]


def log_files(logs: Path, fmt: str, skipped: Counter) -> list[Path]:
    """The files of a logs folder that the format reads, as an import lists them (or the one
    file); symlinks that lead nowhere, which a listing passes over silently, are counted."""
    from ppg.data.importers import source_files

    for f in logs.iterdir() if logs.is_dir() else []:
        if f.is_symlink() and not f.exists():
            skipped["dead_symlink"] += 1
    return source_files(fmt, [logs])


def _record(raw: bytes, where: str, skipped: Counter, examples: dict):
    """The dialogue of one log line, or None (skipped and counted)."""
    def skip(reason, msg=""):
        skipped[reason] += 1
        examples.setdefault(reason, f"{where}: {msg}" if msg else where)

    try:
        text = raw.decode("utf-8").removesuffix("\r")
    except UnicodeDecodeError as e:
        return skip("not_utf8", f"byte {e.start}")
    if not text.strip():
        return None
    try:
        obj = load_json(text, where)
    except DataError as e:
        return skip("not_json", str(e).removeprefix(f"{where}: "))
    if not isinstance(obj, dict):
        return skip("not_json", f"a {type(obj).__name__}, not an object")
    try:
        d = Dialogue.model_validate(obj)
    except ValidationError as e:
        personas, speakers = obj.get("personas"), obj.get("evaluated_speakers")
        if (isinstance(personas, dict) and isinstance(speakers, list) and speakers
                and all(not str(personas.get(s) or "").strip() for s in speakers if isinstance(s, str))):
            return skip("no_persona")
        return skip("invalid", validation_message(e))
    v = d.meta.get("model_version")
    if not isinstance(v, str) or "/" not in v:
        return skip("no_model_version", f"meta.model_version {v!r}, expected NAME/VERSION (e.g. ppg-therapy/3)")
    return d


def read_jsonl(path: Path, start: int, skipped: Counter, examples: dict) -> tuple[list[Dialogue], int, int]:
    """(dialogues, the offset after the last whole line, bytes of an incomplete last line)."""
    with open(path, "rb") as f:
        f.seek(start)
        data = f.read()
    whole = data.rfind(b"\n") + 1  # 0 when no line has ended yet
    out, offset = [], start
    for raw in data[:whole].split(b"\n")[:-1]:
        d = _record(raw, f"{path} at byte {offset}", skipped, examples)
        offset += len(raw) + 1
        if d is not None:
            out.append(d)
    if len(data) > whole:
        skipped["incomplete"] += 1
    return out, start + whole, len(data) - whole


def read_logs(logs: Path, fmt: str, progress: dict) -> tuple[list[Dialogue], dict, dict]:
    """(new dialogues, the progress to store once they are judged, a report: skipped counts by
    reason, the first example of each, pending bytes per file)."""
    skipped, examples, pending, new, out = Counter(), {}, {}, {}, []
    for f in log_files(logs, fmt, skipped):
        key, size = str(f), f.stat().st_size
        if fmt != "jsonl":
            h = content_hash(f)
            if progress.get(key, {}).get("hash") != h:
                new[key] = {"hash": h}
                out += _whole_file(f, fmt, skipped, examples)
            continue
        at = progress.get(key, {})
        start = at.get("offset", 0)
        if start > size or (start and head_hash(f, start) != at.get("head")):
            start = 0  # rotated or rewritten: read it from the start
        if start == size:
            continue
        ds, offset, left = read_jsonl(f, start, skipped, examples)
        out += ds
        if left:
            pending[key] = left
        new[key] = {"offset": offset, "head": head_hash(f, offset)}
    out = _drop_repeats(out, skipped)
    return out, new, {"skipped": dict(skipped), "examples": examples, "pending": pending}


def _whole_file(f: Path, fmt: str, skipped: Counter, examples: dict) -> list[Dialogue]:
    from ppg.data.importers import import_paths

    try:
        return import_paths(fmt, [f])[0]
    except DataError as e:
        skipped["unreadable_file"] += 1
        examples.setdefault("unreadable_file", str(e))
        return []


def _drop_repeats(dialogues: list[Dialogue], skipped: Counter) -> list[Dialogue]:
    seen, out = set(), []
    for d in dialogues:
        same_id = ("id", d.meta.get("model_version"), d.dialogue_id)
        same_words = ("words", d.meta.get("model_version"), json.dumps(
            [d.personas, [(x.speaker, x.text) for x in d.lines]], sort_keys=True))
        if same_id in seen or same_words in seen:
            skipped["repeated"] += 1
            continue
        seen |= {same_id, same_words}
        out.append(d)
    return out
