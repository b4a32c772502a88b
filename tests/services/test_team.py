"""A team's setup, for real: deploy/services.sh starts PostgreSQL, the MLflow server (basic auth,
proxied artifacts) and the Prefect server with a process worker; two clones of this repository
(two "machines") deploy the pipeline to the work pool and run at the same time into one registry
and one DVC remote; a third clone pulls what they pushed; the services restart without losing anything; the
champion is served as a chat model.
Everything is checked through the servers' own APIs. Run by `make services-test` (.ci/run), not
by `make test`: it needs Debian's postgresql package and takes a few minutes."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from ppg.io import free_port

pytestmark = [pytest.mark.services, pytest.mark.timeout(1200)]

ROOT = Path(__file__).resolve().parents[2]
SERVICES = ROOT / "deploy" / "services.sh"
BIN = Path(sys.executable).parent


def sh(*args, cwd=None, env=None, check=True, timeout=600) -> subprocess.CompletedProcess:
    r = subprocess.run([str(a) for a in args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    if check and r.returncode:
        raise AssertionError(f"{' '.join(map(str, args))} exited {r.returncode}:\n"
                             f"{r.stdout[-3000:]}\n{r.stderr[-3000:]}")
    return r


@pytest.fixture(scope="module")
def services(tmp_path_factory):
    """The services on free ports in a temporary folder; purged afterwards, even on failure."""
    folder = tmp_path_factory.mktemp("services")
    os.chmod(folder, 0o755)  # PostgreSQL runs as the postgres user when CI runs as root
    for parent in folder.parents:  # ... and must reach the folder
        if parent == Path("/"):
            break
        if parent.stat().st_mode & 0o001 == 0 and os.geteuid() == 0:
            os.chmod(parent, parent.stat().st_mode | 0o001)
    env = {**os.environ, "PPG_SERVICES_DIR": str(folder), "PPG_PG_PORT": str(free_port()),
           "PPG_MLFLOW_PORT": str(free_port()), "PPG_PREFECT_PORT": str(free_port()), "PPG_WORKERS": "1",
           "PPG_VENV": str(BIN.parent), "DS_ACCELERATOR": "cpu"}
    for k in ("MLFLOW_TRACKING_URI", "PREFECT_API_URL", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
        env.pop(k, None)
    try:
        sh("bash", SERVICES, "up", env=env)
        exports = dict(line.removeprefix("export ").split("=", 1)
                       for line in sh("bash", SERVICES, "env", env=env).stdout.splitlines())
        yield {"env": env, "exports": exports, "folder": folder}
    finally:
        sh("bash", SERVICES, "purge", env=env, check=False)


def client_env(services, **extra) -> dict:
    env = {**os.environ, **services["exports"], "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", **extra}
    env.pop("PPG_PARENT_RUN_ID", None)
    return env


def workspace(path: Path, remote: Path, overlay: dict) -> Path:
    """A clone of this repository's HEAD (a second machine's checkout) on the shared DVC remote."""
    sh("git", "clone", "-q", ROOT, path)
    sh("git", "config", "user.email", "ci@example.org", cwd=path)
    sh("git", "config", "user.name", "ci", cwd=path)
    sh(BIN / "dvc", "remote", "modify", "--local", "local", "url", remote, cwd=path)
    base = yaml.safe_load((ROOT / "deploy" / "params.ci.yaml").read_text())
    (path / "params.ci.yaml").write_text(yaml.safe_dump(merge(base, overlay)))
    return path


def merge(a: dict, b: dict) -> dict:
    out = dict(a)
    for k, v in b.items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def weights(folder: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(folder / "model.safetensors"))


def test_two_workspaces_one_registry_and_a_served_champion(services, tmp_path):
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    exports, env = services["exports"], client_env(services)
    uri, password = exports["MLFLOW_TRACKING_URI"], exports["MLFLOW_TRACKING_PASSWORD"]

    # 0. the MLflow server refuses a client without credentials
    os.environ.pop("MLFLOW_TRACKING_USERNAME", None)
    os.environ.pop("MLFLOW_TRACKING_PASSWORD", None)
    with pytest.raises(MlflowException, match="401|nauthorized|credentials"):
        MlflowClient(tracking_uri=uri).search_experiments()

    # 1. two workspaces: one trains on 2 CPU ranks (train.launcher), the other on one rank with 2
    # accumulation steps: the same optimizer steps
    remote = tmp_path / "remote"
    port = free_port()
    a = workspace(tmp_path / "machine-a", remote,
                  {"train": {"launcher": f"deepspeed --num_gpus 2 --master_port {port}"}})
    b = workspace(tmp_path / "machine-b", remote, {"train": {"deepspeed": {"gradient_accumulation_steps": 2}}})
    names = {}
    for ws in (a, b):
        out = sh(BIN / "ppg", "deploy", "--params", "params.ci.yaml", cwd=ws, env=env).stdout
        names[ws] = next(x.split()[0] for x in out.splitlines() if x.startswith("ppg-pipeline/"))
    assert len(set(names.values())) == 2 and all(n.startswith("ppg-pipeline/scheduled-") for n in names.values())

    os.environ.update(PREFECT_API_URL=exports["PREFECT_API_URL"])
    from prefect.client.orchestration import get_client
    from prefect.deployments import run_deployment

    runs = {ws: run_deployment(name, timeout=0) for ws, name in names.items()}  # both at once
    deadline, states = time.time() + 900, {}
    with get_client(sync_client=True) as pc:
        while time.time() < deadline and len(states) < 2:
            for ws, run in runs.items():
                state = pc.read_flow_run(run.id).state
                if state.is_final():
                    states[ws] = state
            time.sleep(5)
        from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

        logs = {ws: "\n".join(x.message for x in pc.read_logs(LogFilter(flow_run_id=LogFilterFlowRunId(any_=[run.id]))))
                for ws, run in runs.items()}
    assert len(states) == 2, f"flow runs still going after 15 min: {states}"
    for ws, state in states.items():
        assert state.is_completed(), f"{ws.name}: {state.name}: {state.message}\n{logs[ws][-4000:]}"

    # 2. the registry, through the server: two distinct, complete versions; the second gate saw
    # the champion the first one left; the history ends at the champion
    import mlflow

    c = MlflowClient(tracking_uri=uri)
    os.environ.update(MLFLOW_TRACKING_URI=uri, MLFLOW_TRACKING_USERNAME="ppg-admin", MLFLOW_TRACKING_PASSWORD=password)
    versions = c.search_model_versions("name = 'ppg-chatting'")
    assert sorted(int(v.version) for v in versions) == [1, 2]
    assert {v.status for v in versions} == {"READY"}
    assert len({v.run_id for v in versions}) == 2 and all(v.tags.get("ppg.policy") == "greedy" for v in versions)
    for v in versions:
        files = {f.path for f in mlflow.artifacts.list_artifacts(artifact_uri=f"models:/ppg-chatting/{v.version}")}
        assert files >= {"MLmodel", "chat_model.py", "artifacts"}, files
    decisions = []
    for v in versions:
        parent = c.get_run(v.tags["ppg.parent_run_id"])
        local = c.download_artifacts(parent.info.run_id, "gate.json", str(tmp_path / f"gate-{v.version}"))
        decisions.append(json.loads(Path(local).read_text())["decision"])
    first, second = sorted(decisions, key=lambda d: d["champion_before"] is not None)
    assert first["champion_before"] is None and second["champion_before"] == first["champion"]
    assert {d["serialized_by"] for d in decisions} == {"Prefect concurrency limit ppg-gate-ppg-chatting"}
    model = c.get_registered_model("ppg-chatting")
    history = json.loads(model.tags["ppg.champion_history"])
    champion = model.aliases["champion"]
    assert history[-1] == champion == second["champion"]

    # 3. 2 ranks through the launcher trained what 1 rank with 2 accumulation steps did
    start = weights(a / "models" / "base")
    wa, wb = weights(a / "models" / "greedy"), weights(b / "models" / "greedy")
    moved = max(float((wa[k] - start[k]).abs().max()) for k in wa)
    worst = max(float((wa[k] - wb[k]).abs().max()) for k in wa)
    assert moved > 1e-3 and worst < 1e-4, (moved, worst)
    ranks = {ws.name: c.get_run(json.loads((ws / "models/greedy/run.json").read_text())["mlflow_run_id"])
             .data.params["world_size"] for ws in (a, b)}
    assert ranks == {"machine-a": "2", "machine-b": "1"}

    # 4. one DVC remote: a third machine pulls what machine A produced
    c3 = tmp_path / "machine-c"
    sh("git", "clone", "-q", ROOT, c3)
    sh(BIN / "dvc", "remote", "modify", "--local", "local", "url", remote, cwd=c3)
    (c3 / "dvc.lock").write_text((a / "dvc.lock").read_text())
    (c3 / "params.yaml").write_text((a / "params.yaml").read_text())
    sh(BIN / "dvc", "pull", "train@greedy", cwd=c3, env=env)
    assert weights(c3 / "models" / "greedy").keys() == wa.keys()
    assert all(bool((weights(c3 / "models" / "greedy")[k] == wa[k]).all()) for k in wa)
    for ws in (a, b):  # each pushed everything it made
        assert "in sync" in sh(BIN / "dvc", "status", "--cloud", cwd=ws, env=env).stdout.lower()

    # 5. rollback through the server, then the champion back by hand
    if len(history) >= 2:
        sh(BIN / "ppg", "rollback", "--model", "ppg-chatting", cwd=a, env=env)
        assert c.get_registered_model("ppg-chatting").aliases["champion"] == history[-2]
        sh(BIN / "ppg", "promote", champion, "--model", "ppg-chatting", cwd=a, env=env)
    else:  # the second gate kept the first champion: promote v2 by hand, roll back to v1
        other = "2" if champion == "1" else "1"
        sh(BIN / "ppg", "promote", other, "--model", "ppg-chatting", cwd=a, env=env)
        sh(BIN / "ppg", "rollback", "--model", "ppg-chatting", cwd=a, env=env)
    assert c.get_registered_model("ppg-chatting").aliases["champion"] == champion

    # 6. PostgreSQL and both servers restarted: the registry and the flow runs are all there
    def registry_state():
        m = c.get_registered_model("ppg-chatting")
        return (sorted((v.version, v.run_id, v.status, v.tags.get("ppg.gate")) for v in
                       c.search_model_versions("name = 'ppg-chatting'")), m.aliases, m.tags["ppg.champion_history"])

    before = registry_state()
    sh("bash", SERVICES, "down", env=services["env"])
    sh("bash", SERVICES, "up", env=services["env"])
    assert registry_state() == before
    with get_client(sync_client=True) as pc:
        assert all(pc.read_flow_run(run.id).state.is_completed() for run in runs.values())

    # 7. the champion, served for OpenAI clients: a chat with the persona as system message
    import httpx

    serve_port, log_dir = free_port(), tmp_path / "requests"
    server = subprocess.Popen([str(BIN / "ppg"), "serve-model", "--model", "ppg-chatting", "--port", str(serve_port),
                               "--request-log", str(log_dir)], cwd=a, env=env, start_new_session=True,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        url = f"http://127.0.0.1:{serve_port}"
        for _ in range(180):
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert server.poll() is None, server.stdout.read()[-3000:]
            time.sleep(1)
        persona = "I am Ana Lopes, 41, a nurse in Lisbon. I have two cats."
        body = {"model": "ppg-chatting", "max_tokens": 3, "temperature": 0,
                "messages": [{"role": "system", "content": persona}, {"role": "user", "content": "Where do you work?"}]}
        r = httpx.post(f"{url}/v1/chat/completions", json=body, timeout=120)
        assert r.status_code == 200, r.text
        reply = r.json()
        assert reply["object"] == "chat.completion" and reply["system_fingerprint"] == f"ppg-chatting/{champion}"
        assert reply["usage"]["completion_tokens"] <= 3 and isinstance(reply["choices"][0]["message"]["content"], str)
        again = httpx.post(f"{url}/v1/chat/completions", json=body, timeout=120).json()
        assert again["choices"][0]["message"]["content"] == reply["choices"][0]["message"]["content"]  # greedy
        logged = [json.loads(x) for f in sorted(log_dir.glob("requests-*.jsonl")) for x in f.read_text().splitlines()]
        assert len(logged) == 2 and logged[0]["personas"] == {"assistant": persona}
        assert logged[0]["meta"]["model_version"] == f"ppg-chatting/{champion}"
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)

    # 8. the credentials are in no param, tag or text artifact of any run, nor in the flow logs
    exp = c.get_experiment_by_name("ppg")
    for run in c.search_runs([exp.experiment_id], max_results=1000):
        assert password not in json.dumps(run.data.params) + json.dumps(run.data.tags), run.info.run_id
        for f in c.list_artifacts(run.info.run_id):
            if not f.is_dir and f.path.endswith((".json", ".md", ".txt", ".yaml")):
                assert password not in Path(c.download_artifacts(run.info.run_id, f.path, str(tmp_path))).read_text()
    assert all(password not in text for text in logs.values())
    for log in (services["folder"] / "logs").glob("*.log"):
        assert password not in log.read_text(errors="replace"), log
