"""`ppg`: the command line. Importing this package registers every command on the app: the
stages first, then the runs around them (the order `ppg --help` lists them in)."""

from ppg.cli import stages  # noqa: F401  (registers import ... returns)
from ppg.cli import judges  # noqa: F401,I001  (registers judge, train-judge, serve-judge)
from ppg.cli import personas  # noqa: F401,I001  (registers import-personas)
from ppg.cli import pipeline  # noqa: F401,I001  (registers prepare-model ... study-report)
from ppg.cli import lineage  # noqa: F401,I001  (registers stage-deps, reproduce, show)
from ppg.cli import warm  # noqa: F401,I001  (registers warm)
from ppg.cli.app import app

__all__ = ["app"]
