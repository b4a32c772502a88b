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

import typer

from ppg.cli.app import app

WARM_ENV = "PPG_WARM"
"""The socket of the warm process; commands read it only for the commands below."""

COMMANDS = ("evaluate", "evaluate-base")

PRELOAD = ("torch", "transformers", "peft", "mlflow", "pyarrow.parquet", "matplotlib.pyplot", "ppg.cli",
           "ppg.evaluate.run", "ppg.evaluate.report", "ppg.tracking", "transformers.models.auto.modeling_auto",
           "peft.auto")
"""What an evaluation imports that takes time (the lazy imports of its functions included)."""

# variables a stage's command has that the warm process's did not (DVC sets them per stage)
PER_COMMAND = ("DVC_ROOT", "DVC_STAGE", "PWD", "OLDPWD", "SHLVL", "_")


def _sources() -> dict[str, tuple[int, int]]:
    """(mtime, size) of the file of every imported module of this package."""
    root = str(Path(__file__).resolve().parents[1])
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


def serve(path: Path, parent: int | None = None, log=sys.stderr) -> None:
    """Import PRELOAD, then fork a child per request on the socket at path, one at a time, until
    the process that started this one (parent) is gone."""
    import importlib

    env = _environment(dict(os.environ))
    for name in PRELOAD:
        importlib.import_module(name)
    # variables the imports set (torch's inductor cache folder, MLflow's telemetry session): a
    # command's child gets them as its own imports would have set them
    added = {k: v for k, v in os.environ.items() if k not in env and k not in PER_COMMAND}
    sources = _sources()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(str(path) + ".new")
    os.replace(str(path) + ".new", path)  # a command never connects to a process still importing
    sock.listen()
    sock.settimeout(1.0)
    print(f"ppg warm: serving {', '.join(COMMANDS)} at {path} (pid {os.getpid()})", file=log, flush=True)
    while parent is None or os.getppid() == parent:
        try:
            conn, _ = sock.accept()
        except TimeoutError:
            continue
        with conn:
            try:
                _answer(conn, sock, sources, env, added, log)
            except Exception as e:  # a broken request costs its command a cold start, not the server
                print(f"ppg warm: a request failed: {e!r}", file=log, flush=True)


def _answer(conn, sock, sources: dict, env: dict, added: dict, log) -> None:
    """One request: refuse it, or fork its child, wait for it and send its exit status."""
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
        if why:
            conn.sendall(json.dumps({"refused": why}).encode() + b"\n")
            return
        t = time.monotonic()
        sys.stdout.flush()  # nothing buffered here may reach the child's streams
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            sock.close()
            _child(conn, fds, {**req, "env": {**req["env"], **added}})
    finally:
        for fd in fds:
            os.close(fd)
    conn.sendall(json.dumps({"pid": pid}).encode() + b"\n")
    code = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
    code = code if code >= 0 else 128 - code  # killed by a signal: as a shell reports it
    try:
        conn.sendall(json.dumps({"exit": code}).encode() + b"\n")
    except OSError:
        pass  # the command is gone (killed); its child was told
    print(f"ppg warm: {' '.join(req['argv'][1:])} exited {code} after {time.monotonic() - t:.1f} s",
          file=log, flush=True)


def _child(conn, fds: list[int], req: dict) -> None:
    """The forked command: the caller's streams, folder, environment and arguments; never returns."""
    code = 1
    try:
        conn.close()
        for i, fd in enumerate(fds):
            os.dup2(fd, i)
            os.close(fd)
        os.chdir(req["cwd"])
        os.environ.clear()
        os.environ.update(req["env"])
        sys.argv = list(req["argv"])
        signal.signal(signal.SIGINT, signal.default_int_handler)
        from ppg.cli import app

        try:
            app(args=req["argv"][1:], prog_name="ppg")
            code = 0
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else 0 if e.code is None else 1
    except BaseException:
        import traceback

        traceback.print_exc()
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)


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


@app.command("warm")
def warm_(socket_path: Path = typer.Option(..., "--socket", help="The socket to listen at (a new path)."),
          parent: int = typer.Option(None, help="Stop when the process with this id is no longer the parent.")):
    """Import what the evaluation stages import once, then run each one handed over by a command
    whose environment names the socket in PPG_WARM (the pipeline starts one before its
    evaluations): a fork per command, in its folder, environment and streams."""
    serve(socket_path, parent)


def main() -> None:
    """The `ppg` console script: a command the warm process runs, else the app."""
    code = handed_over(sys.argv)
    if code is not None:
        sys.exit(code)
    from ppg.cli import app

    app()
