"""`ppg serve-judge`: the local LLM judge is served by Hugging Face's maintained server,
`transformers serve` (OpenAI-compatible POST /v1/chat/completions, GET /v1/models, GET /health),
with continuous batching on, pinned to one model. Measured against the stdlib server it replaced
(one generation at a time), on the real judge's requests: the same greedy answers, 1.55x the
requests/s at 4 concurrent requests on 2 CPU cores; without continuous batching it is no faster
(docs/benchmarks.md, benchmarks/judge_server.py).

A server pinned to a model refuses requests that name another one, and names a local model by its
path. The judge's requests name `judge.model` (default "judge"), so the model folder is exposed
under that name: a symlink NAME -> folder in a private directory the server runs in."""

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

from ppg.io import free_port


CPU_KV_SHARE = 0.1
"""The share of the machine's memory continuous batching may give its KV cache on CPU.
transformers serve takes 60% there by default (it sizes the cache from total memory), so two
servers, or one beside a training run, exhaust the RAM (seen: two test servers of the tiny model,
11 GB each, one killed by the kernel); a judge's requests are a few hundred tokens each."""


def kv_share(device: str) -> float | None:
    """CPU_KV_SHARE when the server runs on the CPU, else None (transformers' own GPU default)."""
    if device == "cpu":
        return CPU_KV_SHARE
    if device == "auto":
        import torch

        return None if torch.cuda.is_available() else CPU_KV_SHARE
    return None


def serve_command(model_dir: Path, name: str = "judge", host: str = "127.0.0.1", port: int = 8765,
                  batching: bool = True, device: str = "auto") -> tuple[list[str], Path]:
    """(argv, working directory) of `transformers serve` answering as NAME for MODEL_DIR; on the
    CPU its continuous-batching cache is bounded (CPU_KV_SHARE)."""
    if not name or name.startswith("/") or ".." in Path(name).parts:
        raise ValueError(f"--name: {name!r} must be a relative model id such as 'judge' or 'org/judge'")
    exe = Path(sys.executable).parent / "transformers"
    exe = str(exe) if exe.exists() else shutil.which("transformers")
    if exe is None:
        raise FileNotFoundError("transformers serve: no `transformers` command beside this Python or on PATH")
    cwd = Path(tempfile.mkdtemp(prefix="ppg-serve-judge-"))
    link = cwd / name
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(Path(model_dir).resolve(), target_is_directory=True)
    argv = [exe, "serve", name, "--host", host, "--port", str(port),
            "--device", device, "--continuous-batching" if batching else "--no-continuous-batching",
            "--log-level", "warning"]
    if batching and (share := kv_share(device)) is not None:
        argv += ["--cb-max-memory-percent", str(share)]
    return argv, cwd


def serve_env() -> dict:
    """The server's environment: offline (the model is local), no telemetry."""
    return {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1"}


def wait_healthy(proc: subprocess.Popen, url: str, startup_s: float = 180, output=lambda: "",
                 path: str = "/health") -> None:
    """Return once GET URL/PATH answers 200 (mlflow's scoring server answers /ping); if PROC exits
    first, or after STARTUP_S, raise with the tail of its output (OUTPUT() reads it)."""
    import httpx

    deadline = time.monotonic() + startup_s
    while True:
        try:
            if httpx.get(f"{url}{path}", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if proc.poll() is not None:
            raise RuntimeError(f"{url}: the server exited with {proc.returncode}: {output()[-2000:]}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"{url}: no /health within {startup_s} s")
        time.sleep(0.5)


@contextmanager
def judge_server(model_dir: Path, name: str = "judge", port: int | None = None, batching: bool = True,
                 device: str = "auto", startup_s: int = 180):
    """`ppg serve-judge` in a child process for the block: yields its base URL (http://…/v1) once
    /health answers; stops it (and its process group) after. If it dies on the way up, its output
    is in the error."""
    port = port or free_port()
    argv, cwd = serve_command(model_dir, name, "127.0.0.1", port, batching, device)
    log = cwd / "server.log"  # a file, not a pipe nobody reads: a full pipe would stall the server
    with log.open("w") as f:
        proc = subprocess.Popen(argv, cwd=cwd, env=serve_env(), stdout=f, stderr=subprocess.STDOUT,
                                start_new_session=True)
    try:
        wait_healthy(proc, f"http://127.0.0.1:{port}", startup_s, log.read_text)
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        shutil.rmtree(cwd, ignore_errors=True)
