"""This workspace's deployments on a Prefect server's work pool (`ppg deploy`).

A process worker runs each flow run as a subprocess in the workspace folder (the deployment's
source is the folder itself: Prefect's LocalStorage, pulled by a set-working-directory step), so
any number of clones, on one machine or several, can deploy to one pool: each deployment is named
after its workspace (pipeline.deployment) and carries the workspace as its parameter. The cron
schedules come from params.yaml (pipeline.schedule, monitor.schedule), their one source.

A flow run whose process dies (its worker killed, its machine lost) reports nothing more and would
stay Running forever; its heartbeats (pipeline.heartbeat) stop instead, and an automation on the
server, Prefect's documented recipe for "zombie" runs, marks it Crashed after three missed ones.
A rerun then redoes only what had not finished: DVC skips completed stages, training resumes.
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
    env = {"PYTHONPATH": str(root)} if (root / "ppg").is_dir() else {}
    job = {"env": {**env, "PREFECT_FLOWS_HEARTBEAT_FREQUENCY": str(p.pipeline.heartbeat)}}
    made = dict([crash_silent_runs(3 * p.pipeline.heartbeat)])
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


def crash_silent_runs(silent_s: int) -> tuple[str, str]:
    """The server-wide automation that marks a flow run Crashed when it has sent a heartbeat and
    then nothing (no heartbeat, no final state) for silent_s seconds; created once per server and
    value, shared by every workspace. Returns (automation/<name>, id)."""
    from datetime import timedelta

    from prefect.automations import Automation
    from prefect.client.schemas.objects import StateType
    from prefect.events.actions import ChangeFlowRunState
    from prefect.events.schemas.automations import EventTrigger, Posture
    from prefect.events.schemas.events import ResourceSpecification

    name = f"ppg: crash flow runs silent for {silent_s} s"
    try:
        return f"automation/{name}", str(Automation.read(name=name).id)
    except ValueError:  # not there yet
        pass
    final = {f"prefect.flow-run.{s}" for s in ("Completed", "Failed", "Cancelled", "Crashed")}
    made = Automation(
        name=name,
        description="A flow run whose process died stops its heartbeats: end it as Crashed.",
        trigger=EventTrigger(
            after={"prefect.flow-run.heartbeat"}, expect={"prefect.flow-run.heartbeat", *final},
            match=ResourceSpecification({"prefect.resource.id": ["prefect.flow-run.*"]}),
            for_each={"prefect.resource.id"}, posture=Posture.Proactive, threshold=1,
            within=timedelta(seconds=silent_s)),
        actions=[ChangeFlowRunState(state=StateType.CRASHED,
                                    message=f"no heartbeat for {silent_s} s: its process died (worker or machine)")],
    ).create()
    return f"automation/{name}", str(made.id)
