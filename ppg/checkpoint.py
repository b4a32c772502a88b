"""Resumable training checkpoints in a working folder (never a DVC output).

    WORKDIR/step-0000010/       DeepSpeed's files (every rank) + ppg-complete.json (rank 0, last)
    WORKDIR/latest.json         {"tag", "step", "fingerprint"}: temp file + rename

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


class CheckpointMismatch(ValueError):
    """A checkpoint written for another model, dataset or training config."""


def fingerprint(config: dict) -> str:
    return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _complete(workdir: Path) -> list[tuple[int, str, dict]]:
    found = []
    for marker in workdir.glob(f"step-*/{COMPLETE}"):
        try:
            info = json.loads(marker.read_text())
            found.append((int(info["step"]), marker.parent.name, info))
        except (ValueError, KeyError, OSError):
            continue  # an unreadable marker means an incomplete checkpoint
    return sorted(found, reverse=True)


def find_resume(workdir: str | Path, expected: str, config: dict) -> tuple[str, int] | None:
    """(tag, step) of the checkpoint to resume from, or None for a fresh start. config (whose
    fingerprint is expected) names what changed when the checkpoint does not match."""
    workdir = Path(workdir)
    complete = _complete(workdir)
    chosen = None
    pointer = workdir / POINTER
    if pointer.exists():
        try:
            p = json.loads(pointer.read_text())
            chosen = next((c for c in complete if c[1] == p["tag"]), None)
            if chosen is None:
                raise ValueError(f"it names {p['tag']!r}, which is not a complete checkpoint")
        except (ValueError, KeyError, TypeError) as e:
            print(f"ppg: checkpoint pointer {pointer} is unusable ({e}); using the newest complete "
                  f"checkpoint instead", file=sys.stderr)
    elif complete:
        print(f"ppg: checkpoint pointer {pointer} is missing; using the newest complete checkpoint",
              file=sys.stderr)
    chosen = chosen or (complete[0] if complete else None)
    if chosen is None:
        return None
    step, tag, info = chosen
    if info.get("fingerprint") != expected:
        raise CheckpointMismatch(
            f"{workdir / tag}: field fingerprint: checkpoint from a different model or config "
            f"({info.get('fingerprint')} != {expected}; changed: {_changed(info.get('config', {}), config)}). "
            f"Delete {workdir} to start over, or restore the config it was trained with.")
    return tag, step


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
