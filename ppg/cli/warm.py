"""`ppg warm`, the warm process the pipeline starts before its evaluation stages, and the `ppg`
console script, which hands an evaluation to it when PPG_WARM names one (ppg.warm)."""

import sys
from pathlib import Path

import typer

from ppg.cli.app import app
from ppg.warm import handed_over, serve  # stdlib only: the console script stays light


@app.command("warm")
def warm_(socket_path: Path = typer.Option(..., "--socket", help="The socket to listen at (a new path)."),
          parent: int | None = typer.Option(None, help="Stop when the process with this id is no longer the "
                                                        "parent.")):
    """Import what the evaluation stages import once, then run each one handed over by a command
    whose environment names the socket in PPG_WARM (the pipeline starts one before its
    evaluations): a fork per command, in its folder, environment and streams."""
    serve(socket_path, app, parent)


def main() -> None:
    """The `ppg` console script: a command the warm process runs, else the app here."""
    code = handed_over(sys.argv)
    if code is not None:
        sys.exit(code)
    app()
