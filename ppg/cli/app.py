"""The one `ppg` Typer app, its errors and params loading; the commands register on it in
ppg.cli.stages (the pipeline's stages), ppg.cli.judges, ppg.cli.pipeline (the runs around them)
and ppg.cli.lineage. Heavy libraries load inside commands, and Prefect only in the commands that
start flows, so `ppg --help` stays fast."""

import os
from pathlib import Path

import typer

app = typer.Typer(help="Partial Policy Gradients: per-turn credit for persona-consistent LLMs.",
                  no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)


@app.callback()
def _root(version: bool = typer.Option(False, "--version", help="Print the ppg version and exit."),
          local_rank: int = typer.Option(None, "--local_rank", hidden=True,
                                         help="Set by the deepspeed launcher (LOCAL_RANK is read from the "
                                              "environment).")):
    if version:
        from importlib.metadata import version as v

        typer.echo(f"ppg {v('ppg')}")
        raise typer.Exit()


def fail(msg: str):
    typer.secho(f"error: {msg}", fg="red", err=True)
    raise typer.Exit(2)


def out_folder(out: Path, option: str = "--out") -> Path:
    """An output folder that can be one: refused up front when a file (or a file above it) is in
    the way, instead of a FileExistsError half-way through."""
    for p in [out, *out.parents]:
        if p.exists():
            if not p.is_dir():
                fail(f"{option}: {p} is a file, not a folder; nothing written")
            break
    return out


STAGE_PARAMS = typer.Option(Path("params.yaml"), help="The config tree; this command is a pipeline stage and "
                            "refuses to run without it.")
PARAMS = typer.Option(Path("params.yaml"), help="The config tree (the defaults params.yaml ships with when missing).")


def read_params(path: Path, stage: bool = False):
    """The config tree of path. A pipeline stage (stage=True: the commands dvc.yaml runs) refuses
    a missing file: run without its workspace's params.yaml it would train on defaults nobody
    chose. Other commands run on the defaults (the values params.yaml ships with)."""
    from ppg.config import load_params

    if stage and not Path(path).exists():
        fail(f"{path}: no such params file; `ppg` stages run in a workspace (its params.yaml) or with --params FILE")
    try:
        p = load_params(path)
    except ValueError as e:
        fail(str(e))
    if os.environ.get("PPG_TRACE_PARAMS"):  # which params this command reads (ppg.lineage.trace)
        import sys

        from ppg.lineage.trace import watch

        watch(p, next((a for a in sys.argv[1:] if not a.startswith("-")), ""))
    return p
