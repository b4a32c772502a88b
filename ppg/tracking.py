"""MLflow with explicit run ids: never a global active run (MLflow's active run is thread-local,
and Prefect runs tasks in threads). A parent run id arrives as PPG_PARENT_RUN_ID."""

import os
from pathlib import Path

PARENT_ENV = "PPG_PARENT_RUN_ID"


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
    exp = c.get_experiment_by_name(cfg.experiment)
    if exp is not None:
        return exp.experiment_id
    uri = c._tracking_client.tracking_uri
    location = None if not uri.startswith("sqlite:") else Path(cfg.artifacts).resolve().as_uri()
    return c.create_experiment(cfg.experiment, artifact_location=location)


def open_run(c, cfg, run_id=None, name=None, tags=None, params=None) -> str:
    """Continue run_id (a resumed stage) or create a child of $PPG_PARENT_RUN_ID (or a top run)."""
    if run_id:
        c.get_run(run_id)  # raises if it is gone
        c.update_run(run_id, status="RUNNING")
        return run_id
    tags = dict(tags or {})
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
