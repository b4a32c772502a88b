"""Persona lists: backstories to evaluate on, without dialogues (eval.personas_file).

The project's file is JSON lines, one persona per line:

    {"domain": "therapy", "speaker": "patient", "persona": "<backstory>", "meta": {...}}

`speaker` defaults to the domain's usual role (SPEAKERS). `import_personas` reads the
Consistent-LLMs layout: `<domain>__config_<domain>_personas.json`, a JSON list whose entries are
{"description", "strategy"} (therapy), {"persona", "name"} (chatting) or [topic, {"grade_level",
"description"}] (education); a folder of such files is read file by file. Any other entry is an
error naming the file and the entry, never skipped.
"""

import json
import re
from pathlib import Path

from ppg.io import atomic_open

SPEAKERS = {"therapy": "patient", "education": "student", "chatting": "speaker"}


def _entry(path: Path, i: int, domain: str, x) -> dict:
    where = f"{path}: entry {i}"
    if isinstance(x, dict) and isinstance(x.get("description"), str):  # therapy
        return {"persona": x["description"], "meta": {k: v for k, v in x.items() if k != "description"}}
    if isinstance(x, dict) and isinstance(x.get("persona"), str):  # chatting
        return {"persona": x["persona"], "meta": {k: v for k, v in x.items() if k != "persona"}}
    if (isinstance(x, list) and len(x) == 2 and isinstance(x[0], str) and isinstance(x[1], dict)
            and isinstance(x[1].get("description"), str)):  # education: [topic, {grade_level, description}]
        return {"persona": x[1]["description"], "meta": {"topic": x[0], "grade_level": x[1].get("grade_level")}}
    raise ValueError(f"{where}: expected {{description, ...}}, {{persona, ...}} or [topic, {{description, ...}}] "
                     f"(a {domain} persona), got {type(x).__name__}")


def import_personas(src: Path) -> list[dict]:
    """Personas of a Consistent-LLMs persona-pool file, or of every such file in a folder."""
    files = sorted(src.glob("*__config_*_personas.json")) if src.is_dir() else [src]
    if not files:
        raise ValueError(f"{src}: no <domain>__config_<domain>_personas.json file")
    out = []
    for f in files:
        m = re.match(r"(\w+?)__config_", f.name)
        if not m:
            raise ValueError(f"{f}: the name must be <domain>__config_<domain>_personas.json (it names the domain)")
        domain = m.group(1)
        try:
            data = json.loads(f.read_text())
        except (OSError, ValueError) as e:
            raise ValueError(f"{f}: not readable JSON ({e})") from None
        if not isinstance(data, list):
            raise ValueError(f"{f}: expected a JSON list of personas, got {type(data).__name__}")
        for i, x in enumerate(data):
            e = _entry(f, i, domain, x)
            text = e["persona"].strip()
            if len(text) > 1 and text[0] == text[-1] == '"':  # some pools quote the whole backstory
                text = text[1:-1].replace('\\"', '"')
            e["persona"] = text
            if not e["persona"].strip():
                raise ValueError(f"{f}: entry {i}: the persona is empty")
            out.append({"domain": domain, "speaker": SPEAKERS.get(domain, "speaker"), **e})
    return out


def read_personas(path: Path) -> list[dict]:
    """The project's persona file; errors name the file, line and field."""
    out = []
    for n, raw in enumerate(Path(path).read_text().splitlines(), 1):
        if not raw.strip():
            continue
        try:
            x = json.loads(raw)
        except ValueError as e:
            raise ValueError(f"{path}: line {n}: not JSON ({e})") from None
        for key in ("domain", "persona"):
            if not isinstance(x.get(key), str) or not x[key].strip():
                raise ValueError(f"{path}: line {n}: field {key!r} must be a non-empty string")
        speaker = x.get("speaker") or SPEAKERS.get(x["domain"], "speaker")
        out.append({"domain": x["domain"], "speaker": speaker, "persona": x["persona"], "meta": x.get("meta") or {}})
    if not out:
        raise ValueError(f"{path}: no persona")
    return out


def write_personas(path: Path, personas: list[dict]) -> None:
    with atomic_open(path) as f:
        for x in personas:
            f.write(json.dumps(x, ensure_ascii=False) + "\n")
