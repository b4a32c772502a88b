"""`ppg` commands of the pipeline around the stages: prepare-model, run, serve, deploy, serve-model,
promote, rollback, and the K studies."""

import json
import os
from pathlib import Path

import typer

from ppg.cli.app import PARAMS, STAGE_PARAMS, app, fail, read_params


def _prefect_env(p=None):
    # The embedded (ephemeral) Prefect server needs more than its default 20 s to start on 2 cores
    # (measured: 25-60 s); the analytics heartbeat locks a fresh SQLite database.
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    if p is not None:  # a run started here beats as often as a deployed one: the server's
        # automation crashes runs silent for three heartbeats, and Prefect's default is 180 s
        os.environ.setdefault("PREFECT_FLOWS_HEARTBEAT_FREQUENCY", str(p.pipeline.heartbeat))


@app.command("prepare-model")
def prepare_model(
    out: Path = typer.Option(None, help="Folder to write (default: model.base in params.yaml)."),
    params: Path = STAGE_PARAMS,
):
    """Copy the base model (model.spec, converted or built once into the cache) into a folder the
    pipeline versions with DVC."""
    from ppg.models import prepare_model as prepare

    p = read_params(params, stage=True)
    out = out or (Path(p.model.base) if p.model.base else None)
    if out is None:
        fail("out: give --out or set model.base in params.yaml")
    spec = p.model.spec
    if spec == "sim-base":  # the K study's base, built once into the cache (ppg.study.demo)
        from ppg.study.demo import sim_base

        spec = str(sim_base())
    try:
        typer.echo(f"wrote {prepare(spec, out)} ({p.model.spec})")
    except FileNotFoundError as e:
        fail(str(e))


def merged_or_fail(workspace: Path, overlay: Path | None):
    """The workspace's params.yaml with the overlay merged in, validated: a file that can never
    pass fails the command here, before Prefect starts or any stage runs (params.yaml untouched)."""
    from ppg.overlay import merged_params

    if overlay is not None and not overlay.exists():
        fail(f"{overlay}: no such params overlay")
    try:
        return merged_params(workspace / "params.yaml", overlay) if overlay else read_params(workspace / "params.yaml")
    except (ValueError, OSError) as e:
        fail(str(e))


@app.command()
def run(
    params: Path = typer.Option(None, "--params", help="An overlay (e.g. params.tiny.yaml) merged into "
                                "params.yaml before the run; DVC sees the merged values."),
    workspace: Path = typer.Option(Path("."), help="The git + DVC workspace."),
):
    """The whole pipeline once (Prefect's embedded engine): DVC stages, per-policy evaluation,
    registration of the best policy and the promotion gate."""
    _prefect_env(merged_or_fail(workspace, params))
    from flows.pipeline import ppg_pipeline

    result = ppg_pipeline(workspace=str(workspace), overlay=str(params.resolve()) if params else "")
    typer.echo(json.dumps({k: result.get(k) for k in ("parent_run_id", "skipped", "best", "champion")}))


@app.command()
def serve(
    workspace: Path = typer.Option(Path("."), help="The git + DVC workspace the runs use."),
    params: Path = PARAMS,
):
    """Serve the pipeline as a deployment with pipeline.schedule (cron). Runs against the Prefect
    server of PREFECT_API_URL (e.g. `prefect server start`); blocks until stopped."""
    p = read_params(params)
    _prefect_env(p)
    from flows.pipeline import ppg_pipeline

    name = p.pipeline.deployment_name(workspace)
    typer.echo(f"serving ppg-pipeline/{name} on cron {p.pipeline.schedule!r}")
    ppg_pipeline.serve(name=name, cron=p.pipeline.schedule, parameters={"workspace": str(workspace.resolve())})


@app.command()
def deploy(
    workspace: Path = typer.Option(Path("."), help="The git + DVC workspace the runs use."),
    params: Path = typer.Option(None, "--params", help="An overlay every run of the deployment merges "
                                "into params.yaml (as `ppg run --params`)."),
    logs: Path = typer.Option(None, help="The champion's logs folder: also deploy ppg-monitor on it "
                              "(monitor.schedule)."),
    pool: str = typer.Option("", help="Work pool (default: pipeline.pool)."),
):
    """Create (or update) this workspace's deployments on the work pool of the Prefect server at
    PREFECT_API_URL (deploy/services.sh up starts one): ppg-pipeline on pipeline.schedule, and
    ppg-monitor on monitor.schedule when --logs is given. A worker of the pool runs them."""
    if not os.environ.get("PREFECT_API_URL"):
        fail("PREFECT_API_URL is not set: deployments need a Prefect server (eval \"$(deploy/services.sh env)\")")
    _prefect_env(merged_or_fail(workspace, params))
    from flows.deploy import deploy as make

    try:
        made = make(str(workspace), str(params.resolve()) if params else "", str(logs) if logs else "", pool)
    except Exception as e:  # Prefect's errors (unknown pool, server down) name the cause
        fail(f"deploy: {type(e).__name__}: {e}")
    for name, dep_id in made.items():
        typer.echo(f"{name} ({dep_id})")


@app.command("serve-model")
def serve_model(
    model: str = typer.Option(..., help="Registered model name, e.g. ppg-therapy."),
    alias: str = typer.Option("champion", help="The alias (or a version number) to serve."),
    host: str = typer.Option("127.0.0.1", help="Address to listen on."),
    port: int = typer.Option(5100, help="Port to listen on."),
    request_log: Path = typer.Option(None, help="Folder for requests-<UTC date>.jsonl: every answered "
                                     "request as a dialogue in the canonical format (what `ppg monitor --logs` "
                                     "reads), one file per day."),
    max_tokens_cap: int = typer.Option(512, help="The largest max_tokens a request may ask for (400 above)."),
    max_batch: int = typer.Option(16, help="Chats decoded together (continuous batching)."),
    max_prompt_tokens: int = typer.Option(4096, help="The longest chat a request may send, in tokens."),
    params: Path = PARAMS,
):
    """Serve MODEL@ALIAS for OpenAI clients: POST /v1/chat/completions (the persona as the system
    message; max_tokens, temperature, top_p, stop and seed per request), GET /v1/models, GET
    /health; chats in flight are decoded together (ppg.serving). Blocks until stopped."""
    import uvicorn
    from mlflow.exceptions import MlflowException

    from ppg import tracking
    from ppg.registry import load_registered, served_settings
    from ppg.serving.server import Limits, make_app

    p = read_params(params)
    c = tracking.client(p.mlflow)
    try:
        version = alias if alias.isdigit() else c.get_model_version_by_alias(model, alias).version
        c.get_model_version(model, version)
    except MlflowException as e:
        fail(f"{model}@{alias}: not in the registry at {c.tracking_uri}: {e.message}")
    if not 1 <= max_tokens_cap <= 1 << 16 or max_batch < 1 or max_prompt_tokens < 1:
        fail("--max-tokens-cap must be in [1, 65536], --max-batch and --max-prompt-tokens >= 1")
    uri = f"models:/{model}/{version}"
    lm, tok = load_registered(p, uri)
    default_tokens, domain = served_settings(p, uri)
    limits = Limits(max_tokens_cap=max_tokens_cap, default_max_tokens=min(default_tokens, max_tokens_cap),
                    max_prompt_tokens=max_prompt_tokens, max_batch=max_batch)
    app = make_app(lm, tok, model, version, domain, limits, request_log.resolve() if request_log else None)
    typer.echo(f"serving {model} v{version} ({alias}) on http://{host}:{port}/v1/chat/completions", err=True)
    uvicorn.run(app, host=host, port=port, log_level="warning", access_log=False)


@app.command()
def monitor(
    logs: Path = typer.Option(..., help="Folder (or file) of the champion's logged dialogues; each names its "
                              "model in meta.model_version as NAME/VERSION."),
    workspace: Path = typer.Option(Path("."), help="The git + DVC workspace."),
    retraining: bool = typer.Option(True, "--retrain/--no-retrain", help="Run the pipeline when the rule fires."),
    serve: bool = typer.Option(False, help="Serve ppg-monitor on monitor.schedule instead of checking once."),
):
    """One monitoring check (flow ppg-monitor): judge the logs that arrived since the last check,
    score each model version against its own baseline under the same judge, and when the drift
    rule fires put them into the training data and retrain."""
    if not logs.exists():
        fail(f"--logs: {logs}: no such file or folder")
    p = read_params(workspace / "params.yaml")
    _prefect_env(p)
    from flows.monitor import ppg_monitor

    args = {"logs": str(logs.resolve()), "workspace": str(workspace.resolve()), "retraining": retraining}
    if serve:
        name = p.pipeline.deployment_name(workspace)
        typer.echo(f"serving ppg-monitor/{name} on cron {p.monitor.schedule!r}")
        ppg_monitor.serve(name=name, cron=p.monitor.schedule, parameters=args)
        return
    from prefect.exceptions import FailedRun

    try:
        report = ppg_monitor(**args)
    except FailedRun as e:  # the flow says what went wrong in one line (flows/monitor.py)
        fail(str(e))
    for reason, n in sorted(report["skipped"].items()):
        typer.echo(f"skipped {n} log record(s): {reason} (first: {report['examples'].get(reason, '-')})")
    for version, n in report["unregistered"].items():
        typer.echo(f"{version}: not a registered version: {n} dialogue(s) not scored")
    for version, r in report["versions"].items():
        typer.echo(f"{version}: {r['why']}")
    typer.echo("DRIFT: retrained" if report["fired"] and retraining else "DRIFT" if report["fired"]
               else "within bounds" if report["versions"] else "no new logs")


def _registry_op(params, model, op):
    from mlflow.exceptions import MlflowException

    from ppg.lock import LockTimeout, workspace_lock
    from ppg.registry import gate_mutex

    p = read_params(params)
    try:  # the same mutexes as the gate: no hand-made change between its read and its write
        with workspace_lock(p.pipeline.lock_timeout, what="registry change by hand"), gate_mutex(p, model):
            return op(p)
    except (MlflowException, ValueError, LockTimeout, TimeoutError) as e:
        fail(str(e))


@app.command()
def promote(
    version: str = typer.Argument(..., help="Registered model version to make champion."),
    model: str = typer.Option(..., help="Registered model name, e.g. ppg-therapy."),
    params: Path = PARAMS,
):
    """Make VERSION the champion by hand (no gate); the previous champion is kept for rollback."""
    from ppg import registry

    _registry_op(params, model, lambda p: registry.promote(p, model, version, "by hand (ppg promote)"))
    typer.echo(f"{model}@champion -> v{version}")


@app.command()
def rollback(
    model: str = typer.Option(..., help="Registered model name, e.g. ppg-therapy."),
    params: Path = PARAMS,
):
    """Give the champion alias back to the previous champion."""
    from ppg import registry

    v = _registry_op(params, model, lambda p: registry.rollback(p, model))
    typer.echo(f"{model}@champion -> v{v}")


@app.command()
def study(
    params: Path = PARAMS,
    overlay: Path = typer.Option(None, help="An overlay merged into --params for this study only (e.g. "
                                 "params.kstudy.yaml: the settling grid); params.yaml is not changed."),
    limit: int = typer.Option(0, help="Run only the first N cells (0 = the whole grid)."),
):
    """The K study on the simulator (study section of params.yaml) as a Prefect flow: every
    (distance, data size, seed, policy, weighting) cell trained and evaluated once; a rerun skips
    finished cells. Summary in <study.out>/summary.json and MLflow."""
    from ppg.overlay import merged_params

    try:
        merged_params(params, overlay)
    except (ValueError, OSError) as e:
        fail(str(e))
    _prefect_env()
    from flows.study import ppg_study

    s = ppg_study(params=str(params.resolve()), overlay=str(overlay.resolve()) if overlay else "", limit=limit)
    typer.echo(json.dumps({"cells_run": s["cells_run"], "best": s["best"]}))


@app.command()
def demo(
    workspace: Path = typer.Option(Path("kdemo"), help="The demo's own workspace, made on first use."),
    seed: int = typer.Option(0, help="Seed of the logged data and of training; the held-out personas' "
                             "seed is 1000 + 10 * seed, as in the K study."),
):
    """The K demo: the pipeline with params.kdemo.yaml in a workspace of its own, on the settled K
    study's world at d = 1, showing that the credit horizon decides whether the policy guesses
    open facts (online.invented). Registers nothing. The study base (`model.spec: sim-base`) is
    built first, once, into the model cache (about 3 minutes on 2 cores)."""
    import time

    import yaml

    from ppg.study.demo import decision_summary, make_workspace, sim_base

    t0 = time.perf_counter()
    typer.echo(f"study base: {sim_base()} ({time.perf_counter() - t0:.0f} s; built once, outside the demo's clock)")
    typer.echo(f"the demo's workspace {workspace}: {make_workspace(workspace)} (this checkout's code and config, "
               f"params.kdemo.yaml merged in)")
    seeds = workspace / ".ppg-work" / f"seed-{seed}.yaml"  # the run's overlay, kept in its record
    seeds.parent.mkdir(parents=True, exist_ok=True)
    seeds.write_text(yaml.safe_dump({"sim": {"seed": seed}, "train": {"seed": seed},
                                     "eval": {"seed": 1000 + 10 * seed}}))
    p = merged_or_fail(workspace, seeds)
    _prefect_env(p)
    from flows.pipeline import ppg_pipeline

    t0 = time.perf_counter()
    result = ppg_pipeline(workspace=str(workspace), overlay=str(seeds.resolve()))
    typer.echo(f"\nK demo, seed {seed} ({time.perf_counter() - t0:.0f} s of pipeline; plot: "
               f"{workspace / p.eval.out / 'policies.png'}):\n\n{decision_summary(p, workspace / p.eval.out)}")
    typer.echo(json.dumps({k: result.get(k) for k in ("parent_run_id", "skipped", "best", "better_than_base")}))


@app.command("study-real")
def study_real(
    data: Path = typer.Option(..., help="The dialogues/ folder of consistent-LLMs (<domain>__*.json files)."),
    params: Path = PARAMS,
    limit: int = typer.Option(0, help="Run only the first N cells (0 = all)."),
):
    """The K study on real logged dialogues (study.real of params.yaml) as a Prefect flow: offline
    PPG per domain, fold, policy and weighting; likelihood-ratio AUC (or refused, with the count)
    and weighted NLL pooled over persona-grouped folds. Summary in <study.real.out>/summary.json."""
    _prefect_env()
    from flows.study import ppg_study_real

    if not data.is_dir():
        fail(f"--data: {data} is not a folder")
    s = ppg_study_real(data=str(data.resolve()), params=str(params.resolve()), limit=limit)
    typer.echo(json.dumps({"cells_run": s["cells_run"], "wall_seconds": round(s["wall_seconds"])}))


@app.command("study-report")
def study_report(
    out: Path = typer.Option(Path("docs/results"), help="Folder for study-tables.md and the plots."),
    sim: Path = typer.Option(None, help="Simulator summary (default: <study.out>/summary.json)."),
    real: Path = typer.Option(None, help="Real-data summary (default: <study.real.out>/summary.json)."),
    params: Path = PARAMS,
):
    """Tables and plots of the K study from the studies' summary.json files."""
    from ppg.study.report import report

    p = read_params(params)
    try:
        path = report(sim or Path(p.study.out) / "summary.json", real or Path(p.study.real.out) / "summary.json", out)
    except FileNotFoundError as e:
        fail(str(e))
    typer.echo(f"wrote {path}")
