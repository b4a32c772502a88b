"""Warm starts for the evaluation stages. Of an evaluate stage's ~25 s, ~5 s was its process
importing torch, transformers, peft and MLflow, and a pipeline run evaluates five models. Before
its evaluation stages the pipeline starts `ppg warm`, which imports them once and waits; DVC still
runs every stage's own command (`ppg evaluate --policy P`, so dvc.lock, its run cache and `dvc
repro` by hand are unchanged), and that command, finding WARM_ENV in its environment, hands its
command line, folder, environment and standard streams to the warm process and exits with the
status of the child the warm process forks for it. The child is the process the command would
have been, but for when its modules were imported: same arguments, folder, environment and
streams, a fresh address space.

The warm process refuses (and the command runs as it would have, cold) when it could differ: a
file of a `ppg` module it imported changed since it started (a stage runs the code DVC hashed),
or the command's environment is not the one it imported under (modules read variables as they
load)."""

import json
import os
import signal
import socket
import sys
import time
from pathlib import Path

WARM_ENV = "PPG_WARM"
"""The socket of the warm process; commands read it only for the commands below."""

COMMANDS = ("evaluate", "evaluate-base")

PRELOAD = ("torch", "transformers", "peft", "mlflow", "pyarrow.parquet", "matplotlib.pyplot", "ppg.evaluate.run",
           "ppg.evaluate.report", "ppg.tracking", "transformers.models.auto.modeling_auto", "peft.auto")
"""What an evaluation imports that takes time (the lazy imports of its functions included)."""

# variables a stage's command has that the warm process's did not (DVC sets them per stage)
PER_COMMAND = ("DVC_ROOT", "DVC_STAGE", "PWD", "OLDPWD", "SHLVL", "_")


def _sources() -> dict[str, tuple[int, int]]:
    """(mtime, size) of the file of every imported module of this package."""
    root = str(Path(__file__).resolve().parent)  # the ppg package
    out = {}
    for m in list(sys.modules.values()):
        f = getattr(m, "__file__", None)
        if f and f.startswith(root):
            try:
                st = os.stat(f)
                out[f] = (st.st_mtime_ns, st.st_size)
            except OSError:
                out[f] = (-1, -1)
    return out


def _environment(env: dict) -> dict:
    return {k: v for k, v in env.items() if k not in PER_COMMAND}


def serve(path: Path, app, parent: int | None = None, log=sys.stderr) -> None:
    """Import PRELOAD, then fork a child per request on the socket at path, one at a time, until
    the process that started this one (parent) is gone; a child runs its command line on app (the
    `ppg` Typer app) and leaves this function by the command's SystemExit."""
    import importlib

    env = _environment(dict(os.environ))
    for name in PRELOAD:
        importlib.import_module(name)
    # variables the imports set, changed or removed (torch's inductor cache folder, MLflow's
    # telemetry session): a child's environment has them as its own imports would have left it
    added = {k: v for k, v in os.environ.items() if k not in PER_COMMAND and env.get(k) != v}
    removed = [k for k in env if k not in os.environ]
    sources = _sources()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # stopped by its run (SIGTERM), not the terminal's ^C
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(str(path) + ".new")
    sock.listen()
    os.replace(str(path) + ".new", path)  # it exists once it listens and everything is imported
    sock.settimeout(1.0)
    print(f"ppg warm: serving {', '.join(COMMANDS)} at {path} (pid {os.getpid()})", file=log, flush=True)
    while parent is None or os.getppid() == parent:
        try:
            conn, _ = sock.accept()
        except TimeoutError:
            continue
        with conn:
            try:
                ready = _request(conn, sources, env)
            except Exception as e:  # a broken request costs its command a cold start, not the server
                print(f"ppg warm: a request failed: {e!r}", file=log, flush=True)
                continue
            if ready is None:
                continue
            req, fds = ready
            req["env"] = {k: v for k, v in {**req["env"], **added}.items() if k not in removed}
            t = time.monotonic()
            sys.stdout.flush()  # nothing buffered here may reach the child's streams
            sys.stderr.flush()
            pid = os.fork()
            if pid == 0:
                sock.close()
                _child(conn, fds, req, app)
            for fd in fds:
                os.close(fd)
            code = _wait(conn, pid)
            print(f"ppg warm: {' '.join(req['argv'][1:])} exited {code} after {time.monotonic() - t:.1f} s",
                  file=log, flush=True)
            try:
                conn.sendall(json.dumps({"exit": code}).encode() + b"\n")
            except OSError:
                pass  # the command is gone (killed); its child was told


def _request(conn, sources: dict, env: dict) -> tuple[dict, list[int]] | None:
    """A command's request and its three streams, or None when it is refused (it is told why)."""
    msg, fds, _, _ = socket.recv_fds(conn, 1 << 16, 3)
    try:
        while not msg.endswith(b"\n"):  # the request is one line; a stream may split it
            more = conn.recv(1 << 16)
            if not more:
                raise ConnectionError("the command closed the connection mid-request")
            msg += more
        req = json.loads(msg)
        changed = sorted(f for f, st in _sources().items() if sources.get(f) != st)
        differ = sorted(k for k in set(env) | set(_environment(req["env"])) if env.get(k) != req["env"].get(k))
        why = (f"changed since it started: {', '.join(changed)}" if changed else
               f"its environment differs in {', '.join(differ)}" if differ else
               None if len(fds) == 3 else "it did not get the command's standard streams")
    except BaseException:
        for fd in fds:
            os.close(fd)
        raise
    if why:
        for fd in fds:
            os.close(fd)
        conn.sendall(json.dumps({"refused": why}).encode() + b"\n")
        return None
    return req, fds


def _wait(conn, pid: int) -> int:
    """Tell the command its child's pid (it forwards its signals there), wait for the child and
    return its exit status; a command already gone takes its child with it."""
    try:
        conn.sendall(json.dumps({"pid": pid}).encode() + b"\n")
    except OSError:
        os.kill(pid, signal.SIGTERM)
    code = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
    return code if code >= 0 else 128 - code  # killed by a signal: as a shell reports it


def _child(conn, fds: list[int], req: dict, app) -> None:
    """The forked command: the caller's streams, folder, environment and arguments. It ends as the
    command would have (its SystemExit, atexit handlers and all), never back in the server's loop."""
    import fcntl

    try:
        conn.close()
        _die_with_parent()
        high = [fcntl.fcntl(fd, fcntl.F_DUPFD, 3) for fd in fds]  # none of them may be 0-2 while placing
        for fd in fds:
            os.close(fd)
        for i, fd in enumerate(high):
            os.dup2(fd, i)
            os.close(fd)
        os.chdir(req["cwd"])
        os.environ.clear()
        os.environ.update(req["env"])
        sys.argv = list(req["argv"])
        signal.signal(signal.SIGINT, signal.default_int_handler)
    except BaseException:
        import traceback

        traceback.print_exc()
        raise SystemExit(1)
    app(args=req["argv"][1:], prog_name="ppg")  # a Click app ends in SystemExit
    raise SystemExit(0)


def _die_with_parent() -> None:
    """Linux: this child gets SIGTERM when the warm process ends (a stopped run stops it)."""
    import ctypes

    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def handed_over(argv: list[str]) -> int | None:
    """The exit status of this command run by the warm process at WARM_ENV, or None when it is
    to run here: not one of COMMANDS, no warm process, or one that refused (said on stderr)."""
    path = os.environ.get(WARM_ENV)
    if not path or len(argv) < 2 or argv[1] not in COMMANDS:
        return None
    what = f"ppg {argv[1]}: not started warm"
    try:
        conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        conn.connect(path)
        request = json.dumps({"argv": argv, "cwd": os.getcwd(), "env": dict(os.environ)}).encode() + b"\n"
        socket.send_fds(conn, [request], [0, 1, 2])
    except OSError as e:
        print(f"{what} ({path}: {e})", file=sys.stderr, flush=True)
        return None
    with conn:
        replies = conn.makefile("r")
        first = json.loads(replies.readline() or "{}")
        if "pid" not in first:
            print(f"{what}: the warm process refused ({first.get('refused', 'it closed the connection')})",
                  file=sys.stderr, flush=True)
            return None
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):  # stopping this command stops its child
            signal.signal(sig, lambda s, _f: os.kill(first["pid"], s))
        last = json.loads(replies.readline() or "{}")
    if "exit" not in last:
        print(f"ppg {argv[1]}: the warm process ended before its child did", file=sys.stderr, flush=True)
        return 1
    return last["exit"]
