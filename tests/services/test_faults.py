"""Faults of the team setup: the MLflow server stops in the middle of a pipeline run (during
training), then the services come back. Opt-in (`make services-faults`, marker `faults`): it adds
about three minutes to the services check, whose CI share is spent by test_team.py."""

import json
import os
import signal
import subprocess
import time

import pytest
import yaml

from test_team import BIN, SERVICES, client_env, services, sh, workspace  # noqa: F401

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
    while time.time() < deadline and not list(work.glob("*/step-*/ppg-complete.json")):
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
