"""ppg-monitor: one monitoring check of the champion's logs (ppg.monitor.check), and retraining
when the drift rule fires: this workspace's ppg-pipeline deployment when a Prefect server has one
(run_deployment), else the pipeline in process (a subflow)."""

import os
from pathlib import Path

from prefect import flow, get_run_logger
from prefect.states import Failed

from ppg.config import load_params
from ppg.data.schema import DataError
from ppg.judges.endpoint import JudgeError
from ppg.monitor import check


def retrain(p, workspace: str, log) -> dict:
    from prefect.settings import PREFECT_API_URL

    if PREFECT_API_URL.value():
        from prefect.deployments import run_deployment
        from prefect.exceptions import ObjectNotFound

        name = f"ppg-pipeline/{p.pipeline.deployment_name(workspace)}"
        try:
            run = run_deployment(name, parameters={"workspace": workspace}, timeout=0)
            log.info(f"retraining: started {name} (flow run {run.id})")
            return {"deployment": name, "flow_run_id": str(run.id)}
        except ObjectNotFound:
            log.info(f"no deployment {name} on the Prefect server: retraining in process")
    from flows.pipeline import ppg_pipeline

    return {"pipeline": ppg_pipeline(workspace=workspace)}


@flow(name="ppg-monitor", log_prints=True)
def ppg_monitor(logs: str, workspace: str = ".", retraining: bool = True) -> dict:
    """Check the logs folder once; retrain when the rule fires (and retraining is on)."""
    log = get_run_logger()
    start, workspace = os.getcwd(), str(Path(workspace).resolve())
    logs = str(Path(logs).resolve())
    os.chdir(workspace)  # the state, the incoming folder and the embedded stores are workspace-relative
    try:
        try:
            p = load_params()
            report = check(p, Path(logs))
        except (DataError, ValueError, OSError, JudgeError) as e:
            # what a user can fix, said in one line: the run ends Failed with it, no traceback printed
            log.error(str(e))
            return Failed(message=str(e))
        if not report["files"]:
            log.info("no new log files since the last check")
        if report["skipped"]:
            log.warning(f"skipped log records by reason: {report['skipped']} (first of each: {report['examples']})")
        for version, n in report["unregistered"].items():
            log.warning(f"{version}: {n} dialogues of a version the registry does not have: not scored")
        for version, r in report["versions"].items():
            verdict = "DRIFT" if r["fires"] else "ok" if r["fires"] is False else "undecided"
            log.info(f"{version}: {verdict}: {r['why']}")
        if report["fired"]:
            log.info(f"drifted logs written to {report['incoming']} (training data from now on)")
            report["retrain"] = retrain(p, workspace, log) if retraining else None
        elif report["versions"]:
            log.info("the champion is within bounds: no retraining")
        return report
    finally:
        os.chdir(start)
