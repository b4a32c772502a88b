"""`ppg` commands of lineage: stage-deps (the code each DVC stage runs), reproduce (rebuild a
registered version from its record) and show (a version's provenance)."""

import json
import os
from pathlib import Path

import typer

from ppg.cli.app import app, fail, read_params

PARAMS = typer.Option(Path("params.yaml"), help="The config tree (its mlflow section names the store; "
                      "MLFLOW_TRACKING_URI wins).")


@app.command("stage-deps")
def stage_deps(
    dvc_yaml: Path = typer.Option(Path("dvc.yaml"), "--dvc-yaml", help="The stage graph."),
    write: bool = typer.Option(False, help="Rewrite each stage's code deps (entries under ppg/) to its closure."),
):
    """The project modules each stage's `ppg` command imports (ppg.lineage.closure); exits 1 naming
    any a stage runs but does not depend on, unless --write rewrites them."""
    from ppg.lineage.closure import ROOT, uncovered, write_deps

    if write:
        for stage, deps in write_deps(dvc_yaml).items():
            typer.echo(f"{stage}: {' '.join(deps)}")
        return
    missing = uncovered(dvc_yaml, ROOT)
    for stage, files in missing.items():
        typer.echo(f"{stage} runs but does not depend on: {' '.join(files)}")
    if missing:
        typer.echo("run `ppg stage-deps --write` to rewrite the code deps", err=True)
        raise typer.Exit(1)
    typer.echo(f"{dvc_yaml}: every stage depends on the code it runs")


@app.command()
def reproduce(
    name: str = typer.Argument(..., help="Registered model, e.g. ppg-therapy."),
    version: str = typer.Argument(..., help="Its version."),
    into: Path = typer.Option(None, help="An empty folder to rebuild in (default: .ppg-work/reproduce/NAME-vVERSION)."),
    from_: str = typer.Option("train", "--from", help="train: pull the training stage's inputs from the recorded "
                              "DVC remote; import: rerun every stage from the recorded data source."),
    params: Path = PARAMS,
):
    """Rebuild a registered version from its record alone (code at the recorded commit, recorded
    params.yaml and dvc.lock, inputs from the recorded remote), train and evaluate it anew, and
    compare with the registered weights and metrics. Prints one JSON line; exit 1 when the weights
    differ."""
    from mlflow.exceptions import MlflowException

    from ppg import tracking
    from ppg.lineage.reproduce import ReproduceError, reproduce as rebuild

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")

    if from_ not in ("train", "import"):
        fail(f"--from: expected train or import, got {from_!r}")
    c = tracking.client(read_params(params).mlflow)
    into = into or Path(".ppg-work/reproduce") / f"{name}-v{version}"
    try:
        out = rebuild(c, name, version, into.resolve(), from_, say=lambda m: typer.echo(m, err=True))
    except ReproduceError as e:
        fail(str(e))
    except MlflowException as e:  # no such model or version in this store
        fail(f"{name} v{version}: {e.message}")
    typer.echo(json.dumps(out))
    if not out["weights_identical"]:
        raise typer.Exit(1)


@app.command()
def show(
    ref: str = typer.Argument(..., help="NAME (its champion), NAME@ALIAS or NAME/VERSION."),
    as_json: bool = typer.Option(False, "--json", help="The provenance as JSON."),
    params: Path = PARAMS,
):
    """A registered version's provenance: code commit and diff, params that differ from the
    defaults, data md5s and sources, base model, environment, runs, and the gate's decision."""
    from mlflow.exceptions import MlflowException

    from ppg import tracking
    from ppg.lineage.show import provenance, render

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")

    c = tracking.client(read_params(params).mlflow)
    try:
        d = provenance(c, ref)
    except MlflowException as e:
        fail(f"{ref}: {e.message}")
    typer.echo(json.dumps(d, default=str) if as_json else render(d))
