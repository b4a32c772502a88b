"""Faults of the team setup: the MLflow server stops in the middle of a pipeline run (during
training), then the services come back; a Prefect worker dies with its flow run (a lost machine).
Opt-in (`make services-faults`, marker `faults`): it adds about eight minutes to the services
check, whose CI share is spent by test_team.py."""

import json
import os
import signal
import subprocess
import time

import pytest
import yaml

from test_team import BIN, SERVICES, client_env, services, sh, workspace  # noqa: F401

CHECKPOINT = "*/step-*/ppg-complete.json"

pytestmark = [pytest.mark.services, pytest.mark.faults, pytest.mark.timeout(1200)]


def test_tracking_server_killed_mid_training_fails_naming_it_and_the_next_run_resumes(services, tmp_path):  # noqa: F811
    from mlflow import MlflowClient

    uri = services["exports"]["MLFLOW_TRACKING_URI"]
    # few retries, so the outage is given up on in seconds (MLflow's default waits about 4 min)
    env = client_env(services, MLFLOW_HTTP_REQUEST_MAX_RETRIES="1", MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR="1")
    ws = workspace(tmp_path / "machine-d", tmp_path / "remote",
                   {"train": {"max_steps": 8, "checkpoint_every": 2}})
    run = subprocess.Popen([str(BIN / "ppg"), "run", "--params", "params.ci.yaml"], cwd=ws, env=env,
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    work = ws / ".ppg-work" / "train" / "greedy"
    deadline = time.time() + 600
    while time.time() < deadline and not list(work.glob(CHECKPOINT)):
        assert run.poll() is None, run.stdout.read()[-4000:]
        time.sleep(0.5)
    mlflow_pid = int((services["folder"] / "run" / "mlflow.pid").read_text())
    os.killpg(mlflow_pid, signal.SIGKILL)  # the server dies, with its worker
    out = run.communicate(timeout=600)[0]
    assert run.returncode != 0
    assert "stage train@greedy failed" in out and uri.removeprefix("http://") in out, out[-4000:]

    sh("bash", SERVICES, "down", env=services["env"])  # and PostgreSQL restarted with it
    sh("bash", SERVICES, "up", env=services["env"])
    os.environ.update({k: v for k, v in services["exports"].items() if k.startswith("MLFLOW_TRACKING")})
    c = MlflowClient(tracking_uri=uri)
    pointer = json.loads(next(work.glob("*/latest.json")).read_text())
    assert pointer["step"] >= 2
    train_runs = c.search_runs([c.get_experiment_by_name("ppg").experiment_id], "tags.`ppg.stage` = 'train'")
    [killed] = [r for r in train_runs if r.info.status == "RUNNING"]  # its process died without ending it
    assert c.search_registered_models() == []  # the run died in training: nothing registered

    again = sh(BIN / "ppg", "run", "--params", "params.ci.yaml", cwd=ws, env=env, timeout=900)
    result = json.loads(again.stdout.strip().splitlines()[-1])
    assert result["champion"] == {"model": "ppg-chatting", "version": "1"}, again.stdout[-3000:]
    for stage in ("prepare-model", "import", "judge", "validate", "build"):  # the flow prints to its log
        assert f"| {stage} | unchanged |" in again.stdout + again.stderr  # DVC skipped what had finished
    run_json = json.loads((ws / "models/greedy/run.json").read_text())
    assert run_json["mlflow_run_id"] == killed.info.run_id and run_json["steps"] == 8  # resumed, same run
    steps = [m.step for m in c.get_metric_history(killed.info.run_id, "loss")]
    assert sorted(set(steps)) == list(range(1, 9))
    [v] = c.search_model_versions("name = 'ppg-chatting'")
    assert v.run_id == killed.info.run_id and v.tags["ppg.gate"].startswith("promoted")
    assert yaml.safe_load((ws / "params.yaml").read_text())["train"]["max_steps"] == 8


def test_worker_killed_with_its_flow_run_ends_crashed_and_the_rerun_skips_finished_stages(services, tmp_path,  # noqa: F811
                                                                                          monkeypatch):
    from prefect.settings import PREFECT_API_URL, temporary_settings

    exports = services["exports"]
    for k, v in exports.items():  # this process's clients (MLflow's credentials), for this test only
        if k.startswith(("PREFECT", "MLFLOW")):
            monkeypatch.setenv(k, v)
    # Prefect's settings were read when it was first imported (maybe by another test, for other
    # servers): point them at this test's server explicitly
    with temporary_settings(updates={PREFECT_API_URL: exports["PREFECT_API_URL"]}):
        worker_killed_then_rerun(services, tmp_path)


def worker_killed_then_rerun(svc, tmp_path):
    import psutil
    from mlflow import MlflowClient
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId
    from prefect.deployments import run_deployment

    env = client_env(svc)
    ws = workspace(tmp_path / "machine-e", tmp_path / "remote", {"train": {"max_steps": 8, "checkpoint_every": 2}})
    params = ws / "params.yaml"  # Prefect's shortest heartbeat: crashed after 90 s of silence
    params.write_text(params.read_text().replace("heartbeat: 60", "heartbeat: 30"))
    out = sh(BIN / "ppg", "deploy", "--params", "params.ci.yaml", cwd=ws, env=env).stdout
    assert "automation/ppg: crash flow runs silent for 90 s" in out, out
    name = next(x.split()[0] for x in out.splitlines() if x.startswith("ppg-pipeline/"))

    first = run_deployment(name, timeout=0)
    work = ws / ".ppg-work" / "train" / "greedy"
    deadline = time.time() + 600
    while time.time() < deadline and not list(work.glob(CHECKPOINT)):
        time.sleep(0.5)
    assert list(work.glob(CHECKPOINT)), "no training checkpoint within 10 min"
    worker = psutil.Process(int((svc["folder"] / "run" / "worker-1.pid").read_text()))
    tree = [worker, *worker.children(recursive=True)]  # the flow run, dvc, ppg train
    assert len(tree) >= 3
    for proc in tree:  # the machine dies: nothing gets to report anything
        proc.kill()
    killed_at = time.time()
    c = MlflowClient(tracking_uri=svc["exports"]["MLFLOW_TRACKING_URI"])
    [killed] = c.search_runs([c.get_experiment_by_name("ppg").experiment_id],
                             "tags.`ppg.stage` = 'train' and attributes.status = 'RUNNING'")

    with get_client(sync_client=True) as pc:
        while time.time() < killed_at + 300 and not pc.read_flow_run(first.id).state.is_final():
            time.sleep(3)
        state = pc.read_flow_run(first.id).state
        assert state.is_crashed(), f"{state.name}: {state.message}"
        assert "no heartbeat for 90 s" in state.message

        sh("bash", SERVICES, "up", env=svc["env"])  # the worker again; the rest was up
        second = run_deployment(name, timeout=900)
        logs = "\n".join(x.message for x in pc.read_logs(LogFilter(flow_run_id=LogFilterFlowRunId(any_=[second.id]))))
    assert second.state.is_completed(), f"{second.state.name}: {second.state.message}\n{logs[-4000:]}"
    for stage in ("prepare-model", "import", "judge", "validate", "build"):
        assert f"| {stage} | unchanged |" in logs, logs[-4000:]  # DVC skipped what had finished
    run_json = json.loads((ws / "models/greedy/run.json").read_text())
    assert run_json["mlflow_run_id"] == killed.info.run_id and run_json["steps"] == 8  # resumed, same run
    steps = [m.step for m in c.get_metric_history(killed.info.run_id, "loss")]
    assert sorted(set(steps)) == list(range(1, 9))
    [v] = [v for v in c.search_model_versions("name = 'ppg-chatting'") if v.run_id == killed.info.run_id]
    assert v.status == "READY" and "ppg.gate" in v.tags  # registered once, and gated
