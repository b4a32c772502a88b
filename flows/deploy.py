"""This workspace's deployments on a Prefect server's work pool (`ppg deploy`).

A process worker runs each flow run as a subprocess in the workspace folder (the deployment's
source is the folder itself: Prefect's LocalStorage, pulled by a set-working-directory step), so
any number of clones, on one machine or several, can deploy to one pool: each deployment is named
after its workspace (pipeline.deployment) and carries the workspace as its parameter. The cron
schedules come from params.yaml (pipeline.schedule, monitor.schedule), their one source.
"""

from pathlib import Path

from ppg.config import load_params


def deploy(workspace: str = ".", overlay: str = "", logs: str = "", pool: str = "") -> dict:
    """Create or update ppg-pipeline (and, given the champion's logs folder, ppg-monitor) for this
    workspace; returns {flow/deployment: id}."""
    from flows.monitor import ppg_monitor
    from flows.pipeline import ppg_pipeline

    root = Path(workspace).resolve()
    p = load_params(root / "params.yaml")
    name, pool = p.pipeline.deployment_name(root), pool or p.pipeline.pool
    # The flow's subprocess imports this workspace's own `ppg` (and its stages run it), not the
    # one installed in the worker's environment, which may belong to another checkout.
    job = {"env": {"PYTHONPATH": str(root)}} if (root / "ppg").is_dir() else {}
    made = {}
    flows = [(ppg_pipeline, "flows/pipeline.py:ppg_pipeline", p.pipeline.schedule,
              {"workspace": str(root), "overlay": overlay})]
    if logs:
        flows.append((ppg_monitor, "flows/monitor.py:ppg_monitor", p.monitor.schedule,
                      {"logs": str(Path(logs).resolve()), "workspace": str(root)}))
    for fl, entrypoint, cron, parameters in flows:
        dep_id = fl.from_source(source=str(root), entrypoint=entrypoint).deploy(
            name=name, work_pool_name=pool, cron=cron, parameters=parameters, job_variables=job,
            tags=[f"workspace:{root}"], print_next_steps=False, ignore_warnings=True, build=False,
            push=False)
        made[f"{fl.name}/{name}"] = str(dep_id)
    return made
