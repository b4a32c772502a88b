"""MLflow with explicit run ids: never a global active run (MLflow's active run is thread-local,
and Prefect runs tasks in threads). A parent run id arrives as PPG_PARENT_RUN_ID.

Every run is tagged with the workspace it belongs to and the process that runs it (host, pid and
the pid's start time, so a reused pid is not mistaken for the old process). A killed process
cannot end its own run; the next pipeline run of the workspace ends such runs as KILLED
(end_dead_runs), never another workspace's.
"""

import hashlib
import os
import socket
from pathlib import Path

PARENT_ENV = "PPG_PARENT_RUN_ID"


def workspace_id() -> str:
    """This workspace on this host: the stages and the flow all run from the workspace root."""
    return hashlib.sha256(f"{socket.gethostname()}:{Path.cwd().resolve()}".encode()).hexdigest()[:16]


def _started(pid: int) -> str | None:
    import psutil

    try:
        return f"{psutil.Process(pid).create_time():.2f}"
    except psutil.Error:
        return None


def process_tags() -> dict:
    return {"ppg.workspace": workspace_id(), "ppg.host": socket.gethostname(), "ppg.pid": str(os.getpid()),
            "ppg.pid_started": _started(os.getpid()) or ""}


def end_dead_runs(c, cfg, workspace: str | None = None) -> list:
    """End as KILLED the RUNNING runs of this workspace whose process is gone (same host, and its
    pid is not alive or is another process now). Runs of other workspaces, of other hosts and of
    live processes are left alone. Returns the runs it ended."""
    workspace = workspace or workspace_id()
    exp = c.get_experiment_by_name(cfg.experiment)
    if exp is None:
        return []
    host, ended = socket.gethostname(), []
    for run in c.search_runs([exp.experiment_id], f"attributes.status = 'RUNNING' and tags.`ppg.workspace` = "
                                                  f"'{workspace}'", max_results=1000):
        tags = run.data.tags
        if tags.get("ppg.host") != host or not tags.get("ppg.pid", "").isdigit():
            continue
        started = _started(int(tags["ppg.pid"]))
        if started is not None and started == tags.get("ppg.pid_started"):
            continue  # its process still runs
        c.set_tag(run.info.run_id, "ppg.killed", f"process {tags['ppg.pid']} on {host} was gone when a later "
                                                 f"pipeline run took the workspace lock")
        c.set_terminated(run.info.run_id, "KILLED")
        ended.append(run)
    return ended


def ui_url(cfg) -> str:
    """Where runs can be looked at: the tracking server in use (MLFLOW_TRACKING_URI or
    mlflow.tracking_uri, when it is http(s)://: the server serves the UI too), else mlflow.ui_url
    (an `mlflow ui` on the embedded store)."""
    uri = os.environ.get("MLFLOW_TRACKING_URI") or cfg.tracking_uri
    return uri.rstrip("/") if uri.startswith(("http://", "https://")) else cfg.ui_url.rstrip("/")


def client(cfg):
    """An MlflowClient on MLFLOW_TRACKING_URI, else cfg.tracking_uri (folders created)."""
    from mlflow import MlflowClient

    uri = os.environ.get("MLFLOW_TRACKING_URI") or cfg.tracking_uri
    if uri.startswith("sqlite:///"):  # made absolute: the process may change directory later
        db = Path(uri[len("sqlite:///"):]).resolve()
        db.parent.mkdir(parents=True, exist_ok=True)
        uri = f"sqlite:///{db}"
    return MlflowClient(tracking_uri=uri)


def experiment_id(c, cfg) -> str:
    from mlflow.exceptions import MlflowException

    exp = c.get_experiment_by_name(cfg.experiment)
    if exp is not None:
        return exp.experiment_id
    uri = c.tracking_uri
    location = None if not uri.startswith("sqlite:") else Path(cfg.artifacts).resolve().as_uri()
    try:
        return c.create_experiment(cfg.experiment, artifact_location=location)
    except MlflowException as e:  # another workspace on the same server created it first
        exp = c.get_experiment_by_name(cfg.experiment) if e.error_code == "RESOURCE_ALREADY_EXISTS" else None
        if exp is None:
            raise
        return exp.experiment_id


def open_run(c, cfg, run_id=None, name=None, tags=None, params=None) -> str:
    """Continue run_id (a resumed stage) or create a child of $PPG_PARENT_RUN_ID (or a top run)."""
    if run_id:
        c.get_run(run_id)  # raises if it is gone
        c.update_run(run_id, status="RUNNING")
        for k, v in process_tags().items():  # the resuming process owns it now
            c.set_tag(run_id, k, v)
        return run_id
    tags = {**process_tags(), **(tags or {})}
    parent = os.environ.get(PARENT_ENV)
    if parent:
        tags["mlflow.parentRunId"] = parent
    run = c.create_run(experiment_id(c, cfg), run_name=name, tags=tags)
    if params:
        from mlflow.entities import Param

        items = [Param(k, str(v)[:6000]) for k, v in sorted(params.items())]
        for i in range(0, len(items), 100):
            c.log_batch(run.info.run_id, params=items[i:i + 100])
    return run.info.run_id


def log_metrics(c, run_id: str, metrics: dict, step: int):
    import time

    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    c.log_batch(run_id, metrics=[Metric(k, float(v), now, step) for k, v in metrics.items()
                                 if v is not None and v == v])
