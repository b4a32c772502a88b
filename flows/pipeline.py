"""ppg-pipeline: the DVC stage graph run by Prefect, recorded in MLflow, gated into the registry.

Division of labour: DVC owns the graph, caching and versions (each task is `dvc repro -s <stage>`
in dvc.yaml's order, checked against `dvc dag`, so dvc.lock stays the truth and unchanged stages
are skipped); Prefect owns running it (order,
retries, logs, schedules, artifacts); MLflow owns runs and the registry. Nothing here
re-implements a `ppg` stage.

    lock -> parent run -> sources (hash the input files) -> dvc status (clean: stop, say so) ->
    prepare-model, import, validate, build -> train@P, evaluate@P for every policy P (bc, the
    reward-free control, among them), one at a time -> evaluate-base (the untrained control) ->
    best policy on the validation split (controls left out) -> register as `challenger` (when it
    clears the base: registry.require_better_than_base) -> gate on the test split -> dvc push

Started by `ppg run` (embedded engine) or served with a cron schedule by `ppg serve`.
"""

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml
from prefect import flow, get_run_logger, task

from ppg import registry, tracking
from ppg.warm import WARM_ENV
from ppg.lineage import record
from ppg.config import load_params
from ppg.evaluate.report import BASE, plot_policies, table, versus_controls
from ppg.lineage.closure import stage_order
from ppg.lock import workspace_lock
from ppg.metrics import best_policy
from ppg.overlay import apply_overlay
from ppg.returns import is_control

STRIP = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", tracking.PARENT_ENV)


class StageFailed(RuntimeError):
    pass


def stage_env(parent_run_id: str, warm: str | None = None) -> dict:
    """The environment of a stage: this interpreter's bin first (dvc, ppg), the parent run id,
    and the socket of the warm process when one runs (ppg.warm)."""
    env = {k: v for k, v in os.environ.items() if k not in (*STRIP, WARM_ENV)}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env[tracking.PARENT_ENV] = parent_run_id
    if warm:
        env[WARM_ENV] = warm
    return env


def start_warm(parent_run_id: str) -> tuple[subprocess.Popen, Path]:
    """`ppg warm` for this run's evaluation stages: it imports torch, transformers, peft and MLflow
    once, and each `ppg evaluate` DVC runs hands itself over to it (a fork) instead of importing
    them again. Returns once it listens (its socket is in a folder of its own under the temp dir)."""
    folder = Path(tempfile.mkdtemp(prefix="ppg-warm-"))
    sock = folder / "socket"
    with open(folder / "log", "w") as log:  # a session of its own: a ^C meant for the run is the run's
        proc = subprocess.Popen([str(Path(sys.executable).parent / "ppg"), "warm", "--socket", str(sock),
                                 "--parent", str(os.getpid())], env=stage_env(parent_run_id, str(sock)),
                                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 120
    while not sock.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    return proc, sock


def stop_warm(warm: tuple[subprocess.Popen, Path] | None, log) -> list[str]:
    """Stop the warm process; the commands it ran, with their exit status and time."""
    if warm is None:
        return []
    proc, sock = warm
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    lines = (sock.parent / "log").read_text().strip()
    shutil.rmtree(sock.parent, ignore_errors=True)
    log.info("warm process (exit %s):\n%s", proc.returncode, lines[-3000:])
    return [ln.removeprefix("ppg warm: ") for ln in lines.splitlines() if " exited " in ln]


def _dvc(*args, env=None) -> subprocess.CompletedProcess:
    return subprocess.run([str(Path(sys.executable).parent / "dvc"), *args], capture_output=True, text=True,
                          env=env or stage_env(""))


def upstream_first(order: list[str]) -> None:
    """Refuse an order in which a stage comes before one it depends on in DVC's own graph (`dvc
    dag`), or that leaves one of its stages out. The run repros each stage alone (`dvc repro -s`:
    without it every repro checks the whole graph above its stage again, ~3 s a stage on 2 cores),
    which is the same only when everything upstream was repro'd first."""
    r = _dvc("dag", "--dot")
    if r.returncode:
        raise StageFailed(f"dvc dag failed: {r.stderr[-2000:]}")
    at = {s: i for i, s in enumerate(order)}
    nodes = [n for n in re.findall(r'^\s*"([^"]+)";$', r.stdout, re.M) if not n.endswith(".dvc")]  # `dvc add`
    if set(order) - set(nodes):  # a format this does not read must not pass for an empty graph
        raise StageFailed(f"`dvc dag --dot` does not list {', '.join(sorted(set(order) - set(nodes)))}:\n"
                          f"{r.stdout[:2000]}")
    late = [f"{a} -> {b}" for a, b in re.findall(r'^\s*"([^"]+)" -> "([^"]+)";$', r.stdout, re.M)
            if at.get(a, -1) > at.get(b, len(order))]
    left = [n for n in nodes if n not in at]
    if late or left:
        raise StageFailed(f"dvc.yaml's stages are not in an order the run can follow: "
                          f"{'depends on a later stage: ' + ', '.join(late) if late else ''}"
                          f"{'; ' if late and left else ''}{'not run: ' + ', '.join(left) if left else ''}")


@task(task_run_name="dvc repro {stage}")
def repro(stage: str, parent_run_id: str, warm: str | None = None) -> bool:
    """Run one DVC stage alone (`dvc repro -s`: the run has repro'd everything upstream of it,
    upstream_first); True if it ran, False if DVC found it unchanged."""
    log = get_run_logger()
    r = _dvc("repro", "-s", stage, env=stage_env(parent_run_id, warm))
    tail = (r.stdout + r.stderr)[-3000:]
    if r.returncode:
        if stage == "validate" and Path("data/validation/report.md").exists():
            tail += "\n--- data/validation/report.md ---\n" + Path("data/validation/report.md").read_text()[:3000]
        raise StageFailed(f"stage {stage} failed (dvc repro exit {r.returncode}); nothing after it ran:\n{tail}")
    ran = f"Running stage '{stage}'" in r.stdout
    log.info("%s %s", stage, "ran" if ran else "unchanged (skipped by DVC)")
    return ran


@task
def register_and_gate(policy: str, parent_run_id: str, ungated: str | None) -> dict:
    p = load_params()
    log = get_run_logger()
    name, version = registry.register(p, policy, parent_run_id, ungated)
    log.info("registered %s v%s (%s) as %s", name, version, policy, registry.CHALLENGER)
    return registry.gate(p, name, version, policy, parent_run_id, say=log.info)


def link_runs(p, c, parent_run_id: str, trained: dict) -> dict:
    """Tag each policy's run (dataset md5, git commit, policy, K); a run DVC skipped is linked to
    this parent through the run.json it wrote before. Returns policy -> run id."""
    from ppg.returns import parse_policy_id

    runs, md5 = {}, record.dvc_md5(p.build.out)
    commit = c.get_run(parent_run_id).data.tags.get("ppg.git_commit")  # the code the stages ran
    for policy in p.returns.policies:
        run_id = json.loads((Path(p.train.out) / policy / "run.json").read_text())["mlflow_run_id"]
        runs[policy] = run_id
        kind, k = parse_policy_id(policy)
        for key, v in {"ppg.dataset_md5": md5, "ppg.git_commit": commit, "ppg.policy": policy,
                       "ppg.k": k or "", "ppg.policy_class": kind}.items():
            c.set_tag(run_id, key, str(v or ""))
        if not trained.get(policy):
            c.set_tag(parent_run_id, f"ppg.linked.{policy}", run_id)
    return runs


def comparison(p, c, runs: dict, trained: dict) -> dict:
    """The comparison on the validation split: words on the controls first (does any policy clear
    the untrained base, and bc?), the per-policy table (95% CIs) with the controls as rows, each
    policy's paired differences against them, the best policy (a tie goes to the larger lower
    bound against the base; one not shown better than the base is called best only with that
    said), and links to the MLflow runs. Returns {markdown, metrics (the policies', controls
    left out), scores, best, against (control -> policy -> difference), better_than_base}."""
    evaluated = {pol: json.loads((Path(p.eval.out) / pol / "metrics.json").read_text()) for pol in p.returns.policies}
    metrics = {pol: m for pol, m in evaluated.items() if not is_control(pol)}
    path = Path(p.eval.out) / BASE / "metrics.json"
    controls = {BASE: json.loads(path.read_text()) if path.exists() else None,
                **({"bc": evaluated["bc"]} if "bc" in evaluated else {})}
    words, differences, against = versus_controls(p.eval.primary, metrics, controls, p.registry)
    if "bc" not in evaluated:
        words += ("bc, the reward-free control, is not in returns.policies: whether the rewards add anything "
                  "over plain fine-tuning is not measured.\n")
    bounds = {pol: d["lo"] for pol, d in against.get(BASE, {}).items()}
    cleared = [pol for pol, lo in bounds.items() if lo is not None and lo > 0]
    scores, best = best_policy(p.eval.primary, metrics, bounds)  # a tie goes to more evidence
    if best is not None and BASE in against and best not in cleared:
        words += f"Best on validation: {best}, but its interval against the untrained base does not clear 0.\n"
    rows = {**metrics, **{f"{ctl} ({label}, control)": controls[ctl] for ctl, label in
                          ((BASE, "untrained"), ("bc", "reward-free")) if controls.get(ctl)}}
    plot = Path(p.eval.out) / "policies.png"  # beside the evaluations; the parent run gets it too
    plot_policies(rows, p.pipeline.plot or [p.eval.primary], plot)
    exp, ui = tracking.experiment_id(c, p.mlflow), tracking.ui_url(p.mlflow)
    links = "\n".join(f"- {pol}: {'trained in this run' if trained.get(pol) else 'unchanged, from an earlier run'}, "
                      f"[MLflow run {runs[pol]}]({ui}/#/experiments/{exp}/runs/{runs[pol]})"
                      for pol in p.returns.policies)
    md = f"Primary metric: `{p.eval.primary}` (validation split)\n\n{words}\n{table(rows)}\n{differences}\n{links}\n"
    return {"markdown": md, "metrics": metrics, "scores": scores, "best": best, "against": against,
            "better_than_base": cleared, "plot": plot}


@flow(name="ppg-pipeline", log_prints=True)
def ppg_pipeline(workspace: str = ".", overlay: str = "") -> dict:
    """One pipeline run on a workspace (a git + DVC repo with params.yaml and dvc.yaml)."""
    start = os.getcwd()
    os.chdir(workspace)  # stages and the embedded MLflow store use workspace-relative paths
    try:
        return _run(overlay)
    finally:
        os.chdir(start)


def _run(overlay: str) -> dict:
    log = get_run_logger()
    p = load_params()
    with workspace_lock(p.pipeline.lock_timeout, say=log.warning):
        if overlay:
            apply_overlay(Path("params.yaml"), Path(overlay))
            log.info("merged %s into params.yaml", overlay)
        p = load_params()
        c = tracking.client(p.mlflow)
        # holding the lock, no other pipeline run of this workspace is alive: a RUNNING run of
        # ours whose process is gone was killed (and would look alive forever)
        for run in tracking.end_dead_runs(c, p.mlflow):
            log.warning("ended MLflow run %s (%s) as KILLED: its process %s is gone", run.info.run_id,
                        run.info.run_name, run.data.tags.get("ppg.pid"))
        os.environ.pop(tracking.PARENT_ENV, None)
        parent = tracking.open_run(c, p.mlflow, name="pipeline", tags={"ppg.stage": "pipeline"})
        try:
            code = record.log_start(c, parent, overlay)  # the record: params, code, environment
            if code["dirty"]:
                log.warning("the workspace has uncommitted changes: the record keeps their diff (%d bytes), "
                            "but commit the code so a clone can rebuild what this run makes", code["diff_bytes"])
            result = _stages(p, c, parent, log)
        except BaseException as e:
            try:
                c.set_tag(parent, "ppg.error", str(e)[:5000])
                c.set_terminated(parent, "FAILED")
            except Exception as why:  # the tracking server may be what failed: its error is not the cause
                log.warning("could not mark the parent run FAILED at %s: %s", c.tracking_uri, str(why)[:500])
            raise
        c.set_terminated(parent, "FINISHED")
        return result


def commit_workspace(p, c, parent: str, why: str, gate: dict | None, log) -> str | None:
    """Commit dvc.lock, params.yaml and DVC's .gitignore files (only those) in the workspace's
    git, naming the parent run and the outcome, and tag the commit of a registered version
    `ppg/<model>/v<version>`: the workspace's own history then says which data and config made
    each version (DVC's advice).
    Off with pipeline.commit; a workspace with no commit yet is left alone (the MLflow record is
    complete without it)."""
    if not p.pipeline.commit:
        return None
    if record.git_commit() is None:
        log.warning("the workspace has no git commit: dvc.lock and params.yaml are recorded in MLflow only")
        return None
    lock = yaml.safe_load(Path("dvc.lock").read_text()) if Path("dvc.lock").exists() else {}
    # DVC lists its outputs in their folders' .gitignore: part of its state (its docs)
    ignores = {str(Path(out).parent / ".gitignore") for out in record.lock_outs(lock)}
    paths = sorted(x for x in {"dvc.lock", "params.yaml", *ignores} if Path(x).exists())
    record.git("add", "--", *paths)
    if not record.git("diff", "--cached", "--quiet", "--", *paths).returncode:
        return record.git_commit()  # nothing new to commit (the same lock and params)
    msg = f"ppg run {parent}: {why}"[:2000]
    r = record.git("commit", "-q", "--no-verify", "-m", msg, "--", *paths)
    if r.returncode:
        log.warning("could not commit dvc.lock and params.yaml: %s", (r.stderr or r.stdout)[-500:])
        return None
    head = record.git_commit()
    c.set_tag(parent, "ppg.workspace_commit", head)
    if gate:
        tag = f"ppg/{gate['model']}/v{gate['challenger']}"
        t = record.git("tag", "-f", tag, head)
        if t.returncode:
            log.warning("could not tag %s: %s", tag, t.stderr[-300:])
        c.set_model_version_tag(gate["model"], gate["challenger"], "ppg.workspace_commit", head)
    log.info("committed dvc.lock and params.yaml as %s", head[:12])
    return head


class Clock:
    """Wall time per pipeline step, in the order they ran: what a run cost and where."""

    def __init__(self):
        self.steps, self.start = [], time.perf_counter()

    def run(self, name: str, fn, *args, **kwargs):
        t0 = time.perf_counter()
        out = fn(*args, **kwargs)
        note = ("ran" if out else "unchanged") if isinstance(out, bool) else ""  # repro says whether DVC ran it
        self.steps.append((name, time.perf_counter() - t0, note))
        return out

    def markdown(self) -> str:
        rows = "\n".join(f"| {n} | {note} | {s:.1f} |" for n, s, note in self.steps)
        total = time.perf_counter() - self.start
        return f"| step | | wall (s) |\n|---|---|---|\n{rows}\n| **total** | | {total:.1f} |\n"


def _stages(p, c, parent: str, log) -> dict:
    clock = Clock()
    # hash what data.source reads first: dvc status then sees edited files
    clock.run("sources", repro, "sources", parent)
    status = _dvc("status", "--json")
    if status.returncode:
        raise StageFailed(f"dvc status failed: {status.stderr[-2000:]}")
    result = {"parent_run_id": parent, "policies": list(p.returns.policies)}
    changed = {k: v for k, v in json.loads(status.stdout or "{}").items() if v != ["always changed"]}
    if not changed and all((Path(p.eval.out) / x / "metrics.json").exists()
                                                       for x in p.returns.policies):
        log.info("nothing changed (dvc status is clean: no new data, same params): training skipped")
        c.set_tag(parent, "ppg.skipped", "dvc status clean")
        trained, result["skipped"] = {}, True
    else:
        retried = repro.with_options(retries=1, retry_delay_seconds=5)  # evaluation may call a remote judge
        trained, warm = {}, None
        order = stage_order(Path("dvc.yaml"), p.returns.policies, done=("sources",))  # dvc.yaml's order
        upstream_first(["sources", *order])
        try:
            for stage in order:
                evaluates = stage.startswith("evaluate")
                if evaluates and warm is None and p.pipeline.warm:
                    warm = clock.run("start ppg warm", start_warm, parent)
                ran = clock.run(stage, retried if evaluates else repro, stage, parent,
                                str(warm[1]) if warm and evaluates else None)
                if stage.startswith("train@"):
                    trained[stage.removeprefix("train@")] = ran
        finally:
            result["warm"] = stop_warm(warm, log)
        result["skipped"] = False
    record.log_end(c, parent)  # dvc.lock as the stages left it, the input manifests
    runs = link_runs(p, c, parent, trained)
    seen = comparison(p, c, runs, trained)
    md, metrics, best = seen["markdown"], seen["metrics"], seen["best"]
    c.log_text(parent, md, "policies.md")
    c.log_artifact(parent, str(seen["plot"]))
    from prefect.artifacts import create_markdown_artifact

    # the table is there even if registration or the gate fails; the run's last version adds the outcome
    create_markdown_artifact(md, key="ppg-policies", description="Per-policy comparison (validation split)")
    result.update(table=md, trained=trained, runs=runs, validation=seen["scores"], best=best, gate=None,
                  better_than_base=seen["better_than_base"])
    if best is not None:
        c.set_tag(parent, "ppg.best_policy", best)
    if not p.pipeline.register:
        action, why = "none", "pipeline.register is off: the policies were compared, nothing was registered or gated"
    else:
        action, why = registry.registration_step(p, c, best, metrics, runs, trained, seen["against"].get(BASE))
    if action == "register":
        result["gate"] = clock.run("register + gate", register_and_gate, best, parent, why or None)
        g = result["gate"]
        why = f"{'promoted' if g['promoted'] else 'not promoted'} v{g['challenger']} ({best}): {g['reason']}"
    log.info(why)
    if not result["skipped"]:
        push = clock.run("dvc push", _dvc, "push")
        if push.returncode:
            log.warning("dvc push failed (outputs stay in the local cache): %s", push.stderr[-1000:])
    if not result["skipped"]:
        result["workspace_commit"] = clock.run("git commit", commit_workspace, p, c, parent, why, result["gate"], log)
    name = result["gate"]["model"] if result["gate"] else None
    if name is None and metrics:
        name = registry.model_name(p, metrics[best] if best else next(iter(metrics.values())))
    champ = registry.alias_version(c, name, registry.CHAMPION) if name else None
    result["champion"] = {"model": name, "version": champ}
    result["why"] = why
    c.set_tag(parent, "ppg.outcome", why[:5000])
    cost = clock.markdown()
    result["stage_seconds"] = {n: round(s, 1) for n, s, _ in clock.steps}
    for n, s, _ in clock.steps:
        c.log_metric(parent, f"seconds.{n.replace('@', '.').replace(' + ', '_').replace(' ', '_')}", s)
    c.log_text(parent, cost, "stages.md")
    summary = md + f"\n{why}\n\nWhere the time went:\n\n{cost}"
    create_markdown_artifact(summary, key="ppg-policies",
                             description="Per-policy comparison (validation split), the outcome, time per stage")
    print(summary + "\nchampion: " + (f"{name} v{champ}" if champ else f"none yet ({name} has no champion)"))
    return result
