"""Writes that never leave a half-written file: write a temp file beside the target, then rename."""

import os
import socket
import tempfile
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_open(path: str | Path, mode: str = "w", encoding: str | None = "utf-8"):
    """Open a temp file in path's folder; on success fsync and rename it over path, on error
    delete it (the old file, if any, stays as it was)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; give the file the usual permissions
    try:
        with os.fdopen(fd, mode, encoding=None if "b" in mode else encoding) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def content_hash(*paths: str | Path, skip: tuple[str, ...] = ()) -> str:
    """sha256 (16 hex digits) over files' relative names and bytes; a folder counts every file
    under it (sorted, names in `skip` left out). What a run reads, not where or when it was written."""
    import hashlib

    h = hashlib.sha256()
    for root in map(Path, paths):
        files = sorted(f for f in root.rglob("*") if f.is_file()) if root.is_dir() else [root]
        for f in files:
            if f.name in skip:
                continue
            h.update(str(f.relative_to(root) if root.is_dir() else f.name).encode() + b"\0")
            with open(f, "rb") as fh:
                h.update(hashlib.file_digest(fh, "sha256").digest())
    return h.hexdigest()[:16]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on (a rendezvous, a local server)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
