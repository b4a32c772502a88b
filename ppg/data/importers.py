"""Importers: the table of data formats and what drives them. `ppg import` reads through here.

IMPORTERS is the one table of formats: a new format is a reader `(path, ImportStats, label) ->
dialogues` (ppg.data.formats has the project's) and one entry here; data.source, `ppg import
--format`, the sources manifest and the monitor follow from it. import_paths parses every file
fully (all or nothing) before anything is written.
"""

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ppg.data.formats import (ImportStats, import_chitchat, import_consistent_llms, import_jsonl,
                              import_synthetic_persona_chat)
from ppg.data.schema import DataError, Dialogue


def _chitchat_corpus() -> Path:
    import chitchat_dataset

    return Path(chitchat_dataset.__file__).with_name("dataset.json")


@dataclass(frozen=True)
class Importer:
    read: Callable  # (path, ImportStats, file label) -> Dialogue, ... (DataError naming file, record, field)
    suffixes: tuple[str, ...]  # the files of a folder it reads (any case); a folder's others are reported
    packaged: Callable | None = None  # the file the path `-` names (a corpus shipped with a package)


IMPORTERS = {
    "consistent-llms": Importer(import_consistent_llms, (".json",)),
    "synthetic-persona-chat": Importer(import_synthetic_persona_chat, (".csv",)),
    "chitchat": Importer(import_chitchat, (".json",), packaged=_chitchat_corpus),
    "jsonl": Importer(import_jsonl, (".jsonl", ".ndjson", ".json")),
}
FORMATS = tuple(IMPORTERS)
"""What `ppg import --format` and data.source's FORMAT:PATH read."""


def _files(path: Path, suffixes: tuple[str, ...], skipped: list | None = None) -> list[Path]:
    """A file, or the files of a folder such as data/incoming with one of the format's suffixes
    (any case), sorted; the folder's other files go to `skipped` (reported, never silently lost)."""
    if not path.is_dir():
        return [path]
    files = sorted(f for f in path.iterdir() if f.is_file() and not f.name.startswith("."))
    if skipped is not None:
        skipped += [f for f in files if f.suffix.lower() not in suffixes and f.name != "README.md"]
    return [f for f in files if f.suffix.lower() in suffixes]


def file_labels(files: list[Path]) -> dict[Path, str]:
    """The name each file's dialogue ids start with: its stem, or where two files share a stem
    (two folders' therapy.json), the shortest trailing path that tells them apart."""
    files = [Path(f) for f in files]
    labels = {}
    for f in files:
        same = [g for g in files if g.stem == f.stem and g != f]
        depth = 1
        while same and any(_suffix(g, depth) == _suffix(f, depth) for g in same) and depth < len(f.parts):
            depth += 1
        labels[f] = _suffix(f, depth) if same else f.stem
        if any(_suffix(g, depth) == labels[f] for g in same):  # same folder and stem: keep the extension
            labels[f] = labels[f] + f.suffix
    return labels


def _suffix(f: Path, depth: int) -> str:
    return "/".join([*f.parent.parts[len(f.parent.parts) - depth + 1:], f.stem]) if depth > 1 else f.stem


def parse_source(spec: str) -> tuple[str, list[Path]]:
    """data.source FORMAT:PATH[,PATH...] -> (format, paths); `simulator` -> ("simulator", [])."""
    if spec == "simulator":
        return "simulator", []
    fmt, sep, joined = spec.partition(":")
    if not sep or fmt not in IMPORTERS:
        raise DataError(f"data.source: expected simulator or FORMAT:PATH[,PATH...] with FORMAT one of "
                        f"{tuple(IMPORTERS)}, got {spec!r}")
    return fmt, [Path(x) for x in joined.split(",") if x]


def source_files(fmt: str, paths: list[Path], skipped: list | None = None) -> list[Path]:
    """Every file an import of these paths reads (folders expanded as import_paths does); none
    for no paths (data.source `simulator` reads no file)."""
    if not paths:
        return []
    imp = importer(fmt)
    if imp.packaged:
        paths = [imp.packaged() if str(p) == "-" else p for p in paths]
    return [f for p in paths for f in _files(Path(p), imp.suffixes, skipped)]


def importer(fmt: str) -> Importer:
    """The table's entry for fmt; an unknown format is an error naming the known ones."""
    if fmt not in IMPORTERS:
        raise DataError(f"format: {fmt!r} is not one of {tuple(IMPORTERS)}")
    return IMPORTERS[fmt]


def source_manifest(spec: str) -> dict:
    """What data.source reads, by content: {source, files: [{path, bytes, sha256}]}. The `sources`
    stage writes it and `import` depends on it, so editing, adding or removing a file that the
    source names (anywhere, not only under data/incoming) re-runs import and what follows."""
    fmt, paths = parse_source(spec)
    files = []
    for f in source_files(fmt, paths):
        if not f.is_file():
            raise DataError(f"data.source: {f}: no such file (from {spec!r})")
        with open(f, "rb") as fh:
            files.append({"path": str(f), "bytes": f.stat().st_size,
                          "sha256": hashlib.file_digest(fh, "sha256").hexdigest()})
    return {"source": spec, "files": files}


def _content_key(d: Dialogue) -> str:
    return hashlib.sha256(json.dumps([d.domain, d.personas, [(ln.speaker, ln.text) for ln in d.lines]],
                                     sort_keys=True).encode()).hexdigest()


def import_paths(fmt: str, paths: list[Path]) -> tuple[list[Dialogue], dict]:
    """Parse every path fully (all or nothing). Two files may share a name (file_labels keeps
    their ids apart); a duplicate dialogue id, or the same dialogue (domain, personas and lines)
    in two files (a copy), is an error naming both. A folder's files of other types are listed in the
    summary (`skipped_files`) and on stderr."""
    import sys

    read = importer(fmt).read
    stats, out, seen, same = ImportStats(), [], {}, {}
    skipped: list[Path] = []
    files = source_files(fmt, paths, skipped)
    labels = file_labels(files)
    for p in files:
        for d in read(Path(p), stats, labels[Path(p)]):
            if d.dialogue_id in seen:
                raise DataError(f"{p}: field dialogue_id: {d.dialogue_id!r} already imported from "
                                f"{seen[d.dialogue_id]}")
            key = _content_key(d)
            if key in same and same[key][1] != p:
                raise DataError(f"{p}: dialogue {d.dialogue_id!r}: the same dialogue (domain, personas and lines) as "
                                f"{same[key][0]!r} from {same[key][1]}: a copied file?")
            seen[d.dialogue_id] = p
            same.setdefault(key, (d.dialogue_id, p))
            out.append(d)
    summary = stats.summary()
    if skipped:
        summary["skipped_files"] = [str(f) for f in skipped]
        print(f"ppg import: skipped {len(skipped)} file(s) that {fmt} does not read (not "
              f"{'/'.join('*' + x for x in importer(fmt).suffixes)}): "
              f"{', '.join(map(str, skipped))}", file=sys.stderr)
    return out, summary
