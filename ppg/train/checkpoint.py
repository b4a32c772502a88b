"""Resumable training checkpoints, one working folder per fingerprint (never a DVC output).

    ROOT/<run>/<fingerprint>/ident.json         what the run reads and every knob it runs with
    ROOT/<run>/<fingerprint>/step-0000010/      DeepSpeed's files (every rank) + ppg-complete.json (rank 0, last)
    ROOT/<run>/<fingerprint>/latest.json        {"tag", "step", "fingerprint"}: temp file + rename

The fingerprint hashes the CONTENT of what a run reads (the built split, the base model, a warm
start) and every knob that changes its result, the step budget included. A run resumes only from
its own fingerprint's folder: a checkpoint of other data or another config, finished or not, is
never a resume point (a finished run of the old data would otherwise hand back the old weights).
The run then starts fresh, says what changed, and removes the other folders (bounded disk).

DeepSpeed writes its own `latest` file in place, which a full disk can leave truncated: we save
with save_latest=False and write our pointer only after the checkpoint is complete. On resume a
missing or unreadable pointer is reported and the newest complete checkpoint is used instead.
"""

import hashlib
import json
import shutil
import sys
from pathlib import Path

from ppg.io import atomic_open

COMPLETE = "ppg-complete.json"
POINTER = "latest.json"
IDENT = "ident.json"


def fingerprint(config: dict) -> str:
    return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _say(msg):
    print(msg, file=sys.stderr)


def workdir_for(root: str | Path, fp: str, ident: dict, rank0: bool = True, say=_say) -> Path:
    """The working folder of fingerprint fp under root (WORKDIR/<run name>). Rank 0 removes the
    folders of other fingerprints (and a pre-fingerprint layout), naming what changed, and records
    ident; every rank then gets the same path."""
    import torch.distributed as dist

    root = Path(root)
    work = root / fp
    if rank0:
        others = sorted(x for x in root.iterdir() if x != work) if root.is_dir() else []
        if others:
            old = next((x / IDENT for x in others if (x / IDENT).exists()), None)
            try:
                changed = _changed(json.loads(old.read_text()), ident) if old else "unknown (an older layout)"
            except (OSError, ValueError):
                changed = "unknown (unreadable ident.json)"
            say(f"ppg: {root}: checkpoints of other data or config are never resumed (changed: "
                f"{changed or 'nothing recorded'}); removed {', '.join(x.name for x in others)}")
            for x in others:
                shutil.rmtree(x) if x.is_dir() else x.unlink()
        if not _complete(work):
            say(f"ppg: {work}: no checkpoint of this data and config; starting fresh (a new MLflow run)")
        with atomic_open(work / IDENT) as f:
            json.dump(ident, f, indent=1, sort_keys=True, default=str)
    if dist.is_initialized():
        dist.barrier()  # the other ranks start only after the old folders are gone
    return work


def _complete(workdir: Path) -> list[tuple[int, str, dict]]:
    found = []
    for marker in workdir.glob(f"step-*/{COMPLETE}"):
        try:
            info = json.loads(marker.read_text())
            found.append((int(info["step"]), marker.parent.name, info))
        except (ValueError, KeyError, OSError):
            continue  # an unreadable marker means an incomplete checkpoint
    return sorted(found, reverse=True)


def find_resume(workdir: str | Path, expected: str, config: dict | None = None) -> tuple[str, int] | None:
    """(tag, step) of the checkpoint to resume from, or None for a fresh start. Only a complete
    checkpoint whose fingerprint is `expected` qualifies; another is reported and skipped."""
    workdir = Path(workdir)
    complete = []
    for c in _complete(workdir):
        if c[2].get("fingerprint") == expected:
            complete.append(c)
        else:
            print(f"ppg: {workdir / c[1]}: checkpoint of fingerprint {c[2].get('fingerprint')} (changed: "
                  f"{_changed(c[2].get('config', {}), config or {}) or 'unknown'}), not {expected}: never "
                  f"resumed", file=sys.stderr)
    chosen = None
    pointer = workdir / POINTER
    if pointer.exists():
        try:
            p = json.loads(pointer.read_text())
            chosen = next((c for c in complete if c[1] == p["tag"]), None)
            if chosen is None:
                raise ValueError(f"it names {p['tag']!r}, which is not a complete checkpoint of this run")
        except (ValueError, KeyError, TypeError) as e:
            print(f"ppg: checkpoint pointer {pointer} is unusable ({e}); using the newest complete "
                  f"checkpoint instead", file=sys.stderr)
    elif complete:
        print(f"ppg: checkpoint pointer {pointer} is missing; using the newest complete checkpoint",
              file=sys.stderr)
    chosen = chosen or (complete[0] if complete else None)
    return (chosen[1], chosen[0]) if chosen else None


def _changed(saved: dict, now: dict, prefix="") -> str:
    keys = sorted(set(saved) | set(now))
    out = []
    for k in keys:
        a, b = saved.get(k), now.get(k)
        if isinstance(a, dict) and isinstance(b, dict):
            sub = _changed(a, b, f"{prefix}{k}.")
            out += [sub] if sub else []
        elif json.dumps(a, sort_keys=True, default=str) != json.dumps(b, sort_keys=True, default=str):
            out.append(f"{prefix}{k}")
    return ", ".join(out)


def save(engine, workdir: str | Path, step: int, client_state: dict, fp: str, config: dict,
         keep: int, rank0: bool) -> str:
    """Every rank calls this (DeepSpeed saves per-rank shards); rank 0 then marks and points."""
    import torch.distributed as dist

    workdir = Path(workdir)
    tag = f"step-{step:07d}"
    engine.save_checkpoint(str(workdir), tag=tag, client_state=client_state, save_latest=False)
    if dist.is_initialized():
        dist.barrier()  # all shards are on disk before the checkpoint is declared complete
    if rank0:
        with atomic_open(workdir / tag / COMPLETE) as f:
            json.dump({"step": step, "fingerprint": fp, "config": config}, f, default=str)
        with atomic_open(workdir / POINTER) as f:
            json.dump({"tag": tag, "step": step, "fingerprint": fp}, f)
        keep_tags = {t for _, t, _ in _complete(workdir)[:keep]}
        for d in workdir.glob("step-*"):
            if d.is_dir() and d.name not in keep_tags and d.name <= tag:
                shutil.rmtree(d, ignore_errors=True)
    if dist.is_initialized():
        dist.barrier()
    return tag
