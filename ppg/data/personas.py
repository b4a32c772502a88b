"""Persona lists: backstories to evaluate on, without dialogues (eval.personas_file).

The project's file is JSON lines, one persona per line:

    {"domain": "therapy", "speaker": "patient", "persona": "<backstory>", "meta": {...}}

`speaker` defaults to the domain's usual role (SPEAKERS). `import_personas` reads the
Consistent-LLMs layout: `<domain>__config_<domain>_personas.json`, a JSON list whose entries are
{"description", "strategy"} (therapy), {"persona", "name"} (chatting) or [topic, {"grade_level",
"description"}] (education), each file in its own domain's layout (LAYOUTS); a folder of such
files is read file by file. A backstory follows the rules of a dialogue's text (no control
characters, something visible: ppg.data.schema.check_text) and is at most MAX_PERSONA_CHARS long.
Any other entry is an error naming the file, the entry and the field, never skipped. An entry
repeated exactly (same domain, backstory and meta) is merged into its first and counted.
"""

import json
import re
from pathlib import Path

from ppg.data.schema import MAX_LINE_CHARS, check_text
from ppg.io import atomic_open

SPEAKERS = {"therapy": "patient", "education": "student", "chatting": "speaker"}
MAX_PERSONA_CHARS = MAX_LINE_CHARS
"""Longest backstory accepted (a pool's longest is ~3,900 characters): longer is a broken entry."""


def _keyed(key: str):
    """An entry {key: <backstory>, ...}: the rest is meta."""
    def read(x):
        if isinstance(x, dict) and isinstance(x.get(key), str):
            return x[key], {k: v for k, v in x.items() if k != key}
    return read


def _education(x):
    if (isinstance(x, list) and len(x) == 2 and isinstance(x[0], str) and isinstance(x[1], dict)
            and isinstance(x[1].get("description"), str)):
        return x[1]["description"], {"topic": x[0], "grade_level": x[1].get("grade_level")}


# domain -> (its pool's entry layout, as an error names it; the reader: (backstory, meta) or None)
LAYOUTS = {"therapy": ("{description, ...}", _keyed("description")), "chatting": ("{persona, ...}", _keyed("persona")),
           "education": ("[topic, {grade_level, description}]", _education)}


def backstory(where: str, text: str) -> str:
    """A persona's text, checked as a dialogue's text is; errors name where it came from."""
    if len(text) > MAX_PERSONA_CHARS:
        raise ValueError(f"{where}: {len(text):,} characters, more than {MAX_PERSONA_CHARS:,} (a broken entry, "
                         f"not a backstory)")
    try:
        return check_text(text)
    except ValueError as e:
        raise ValueError(f"{where}: {e}") from None


def _entry(path: Path, i: int, domain: str, x) -> dict:
    layout, read = LAYOUTS[domain]
    got = read(x)
    if got is None:
        shape = (f"keys {sorted(x)[:6]}" if isinstance(x, dict) else f"a list of {len(x)}" if isinstance(x, list)
                 else type(x).__name__)
        raise ValueError(f"{path}: entry {i}: expected {layout} (the layout of {domain} persona pools), got {shape}")
    text, meta = got
    text = text.strip()
    if len(text) > 1 and text[0] == text[-1] == '"':  # some pools quote the whole backstory
        text = text[1:-1].replace('\\"', '"')
    if not text.strip():
        raise ValueError(f"{path}: entry {i}: the persona is empty")
    return {"persona": backstory(f"{path}: entry {i}: persona", text), "meta": meta}


def import_personas(src: Path) -> tuple[list[dict], int]:
    """Personas of a Consistent-LLMs persona-pool file, or of every such file in a folder, and
    how many exact repeats were merged."""
    files = sorted(src.glob("*__config_*_personas.json")) if src.is_dir() else [src]
    if not files:
        raise ValueError(f"{src}: no <domain>__config_<domain>_personas.json file")
    out = []
    for f in files:
        m = re.match(r"(\w+?)__config_", f.name)
        if not m:
            raise ValueError(f"{f}: the name must be <domain>__config_<domain>_personas.json (it names the domain)")
        domain = m.group(1)
        if domain not in LAYOUTS:
            raise ValueError(f"{f}: domain {domain!r} has no known persona pool layout (known: {sorted(LAYOUTS)}); "
                             f"write the project's persona file (JSON lines) instead")
        try:
            data = json.loads(f.read_text())
        except (OSError, ValueError) as e:
            raise ValueError(f"{f}: not readable JSON ({e})") from None
        if not isinstance(data, list):
            raise ValueError(f"{f}: expected a JSON list of personas, got {type(data).__name__}")
        for i, x in enumerate(data):
            out.append({"domain": domain, "speaker": SPEAKERS[domain], **_entry(f, i, domain, x)})
    return merge_repeats(out)


def merge_repeats(personas: list[dict]) -> tuple[list[dict], int]:
    """The personas with exact repeats (domain, speaker, backstory and meta) dropped, and how many."""
    seen, out = set(), []
    for x in personas:
        key = json.dumps(x, sort_keys=True, ensure_ascii=False)
        if key not in seen:
            seen.add(key)
            out.append(x)
    return out, len(personas) - len(out)


def read_personas(path: Path) -> list[dict]:
    """The project's persona file; errors name the file, line and field."""
    out, lines = [], {}
    try:
        text = Path(path).read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not UTF-8 at byte {e.start}") from None
    for n, raw in enumerate(text.splitlines(), 1):
        if not raw.strip():
            continue
        try:
            x = json.loads(raw)
        except ValueError as e:
            raise ValueError(f"{path}: line {n}: not JSON ({e})") from None
        if not isinstance(x, dict):
            raise ValueError(f"{path}: line {n}: expected an object {{domain, persona, ...}}, got {type(x).__name__}")
        for key in ("domain", "persona"):
            if not isinstance(x.get(key), str) or not x[key].strip():
                raise ValueError(f"{path}: line {n}: field {key!r} must be a non-empty string")
        if not isinstance(x.get("speaker") or "", str) or not isinstance(x.get("meta") or {}, dict):
            raise ValueError(f"{path}: line {n}: field 'speaker' must be a string and 'meta' an object")
        speaker = x.get("speaker") or SPEAKERS.get(x["domain"], "speaker")
        persona = backstory(f"{path}: line {n}: field 'persona'", x["persona"])
        out.append({"domain": x["domain"], "speaker": speaker, "persona": persona, "meta": x.get("meta") or {}})
        key = json.dumps(out[-1], sort_keys=True, ensure_ascii=False)
        if key in lines:  # evaluation would count the persona twice
            raise ValueError(f"{path}: line {n}: the same persona as line {lines[key]} (remove one)")
        lines[key] = n
    if not out:
        raise ValueError(f"{path}: no persona")
    return out


def write_personas(path: Path, personas: list[dict]) -> None:
    with atomic_open(path) as f:
        for x in personas:
            f.write(json.dumps(x, ensure_ascii=False) + "\n")
