"""One pipeline run at a time per workspace: an exclusive flock on .ppg-work/pipeline.lock.

DVC holds its own lock only while one `dvc repro` runs; a pipeline run is many of them plus
registration and the promotion gate, so whole runs are serialized here. A second run waits
(saying who holds the lock) and fails cleanly after pipeline.lock_timeout seconds. flock is
released by the kernel when the holder dies, so a killed run never leaves a stale lock.
"""

import fcntl
import json
import os
import socket
import time
from contextlib import contextmanager
from pathlib import Path

LOCK_PATH = Path(".ppg-work/pipeline.lock")


class LockTimeout(RuntimeError):
    pass


@contextmanager
def workspace_lock(timeout: float, what: str = "pipeline run", path: Path = LOCK_PATH, say=print):
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    f = open(path, "a+")
    start, told = time.monotonic(), False
    try:
        while True:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                holder = path.read_text().strip() or "unknown holder"
                waited = time.monotonic() - start
                if waited >= timeout:
                    raise LockTimeout(f"{path}: another pipeline run holds this workspace ({holder}); "
                                      f"gave up after {waited:.0f} s (pipeline.lock_timeout = {timeout:g})") from None
                if not told:
                    say(f"waiting for {path}: held by {holder} (up to {timeout:g} s)")
                    told = True
                time.sleep(min(0.5, max(timeout - waited, 0.01)))
        f.seek(0)
        f.truncate()
        f.write(json.dumps({"what": what, "pid": os.getpid(), "host": socket.gethostname(),
                            "since": time.strftime("%Y-%m-%dT%H:%M:%S")}))
        f.flush()
        try:
            yield
        finally:
            f.seek(0)
            f.truncate()
            f.flush()
            fcntl.flock(f, fcntl.LOCK_UN)
    finally:
        f.close()
