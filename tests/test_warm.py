"""Warm starts (ppg.warm): a command handed to the warm process prints and exits as it does
cold, in its own folder, and the warm process refuses whenever the child could differ from a
cold process: its code changed on disk, or the command's environment is not the one it
imported under. (The pipeline's lifecycle test evaluates warm and its rebuild test cold: the
same metrics.)"""

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ppg.warm import WARM_ENV

PPG = str(Path(sys.executable).parent / "ppg")
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def warm(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("warm")
    sock, log = tmp / "socket", tmp / "log"
    # PPG_TRACE_PARAMS: each command appends the params it read when it exits (an atexit handler)
    env = {**os.environ, WARM_ENV: str(sock), "PPG_TRACE_PARAMS": str(tmp / "trace.jsonl")}
    with open(log, "w") as out:
        proc = subprocess.Popen([PPG, "warm", "--socket", str(sock)], env=env, stdout=out, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 120
    while not sock.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    assert sock.exists(), log.read_text()
    work = tmp / "ws"
    work.mkdir()
    shutil.copy(ROOT / "params.yaml", work / "params.yaml")
    yield env, log, work
    proc.terminate()
    proc.wait(10)


def run_ppg(args, cwd, env):
    return subprocess.run([PPG, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=120)


def served(log: Path) -> list[str]:
    lines = log.read_text().splitlines()
    return [ln.removeprefix("ppg warm: ").split(" after ")[0] for ln in lines if " exited " in ln]


def test_a_command_run_warm_prints_and_exits_as_it_does_cold(warm):
    env, log, work = warm
    cold_env = {k: v for k, v in env.items() if k != WARM_ENV}
    for args in (["evaluate", "--policy", "nope"], ["evaluate-base", "--help"]):
        cold, hot = run_ppg(args, work, cold_env), run_ppg(args, work, env)
        assert (hot.returncode, hot.stdout, hot.stderr) == (cold.returncode, cold.stdout, cold.stderr)
    assert served(log)[-2:] == ["evaluate --policy nope exited 2", "evaluate-base --help exited 0"]
    # a child ends as a cold process does, its exit handlers run: cold, then warm, wrote the same line
    trace = Path(env["PPG_TRACE_PARAMS"]).read_text().splitlines()
    assert len(trace) == 2 and trace[0] == trace[1] and '"command": "evaluate"' in trace[0]
    missing = run_ppg(["evaluate", "--policy", "nope"], work, env)
    assert missing.returncode == 2 and "models/nope: no trained model" in missing.stderr  # read in its folder


def test_the_warm_process_refuses_when_the_code_or_the_environment_changed(warm):
    env, log, work = warm
    before = len(served(log))
    other = run_ppg(["evaluate", "--policy", "nope"], work, {**env, "PPG_SOMETHING_NEW": "1"})
    assert other.returncode == 2 and "models/nope: no trained model" in other.stderr  # it ran, cold
    assert "not started warm: the warm process refused (its environment differs in PPG_SOMETHING_NEW)" in other.stderr
    import ppg.evaluate.online

    source = Path(ppg.evaluate.online.__file__)  # imported by the warm process; touched, then restored
    st = source.stat()
    os.utime(source, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    try:
        edited = run_ppg(["evaluate", "--policy", "nope"], work, env)
    finally:
        os.utime(source, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert edited.returncode == 2 and "changed since it started" in edited.stderr and "online.py" in edited.stderr
    assert len(served(log)) == before  # neither was run by the warm process
    again = run_ppg(["evaluate", "--policy", "nope"], work, env)
    assert again.returncode == 2 and "not started warm" not in again.stderr and len(served(log)) == before + 1


def test_a_command_whose_warm_process_is_gone_runs_cold_and_says_so(tmp_path):
    shutil.copy(ROOT / "params.yaml", tmp_path / "params.yaml")
    r = run_ppg(["evaluate", "--policy", "nope"], tmp_path, {**os.environ, WARM_ENV: str(tmp_path / "gone")})
    assert r.returncode == 2 and "ppg evaluate: not started warm" in r.stderr and "no trained model" in r.stderr
