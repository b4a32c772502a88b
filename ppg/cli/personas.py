"""`ppg import-personas`: persona lists for real-persona evaluation (eval.personas_file)."""

from pathlib import Path

import typer

from ppg.cli.app import app, fail


@app.command("import-personas")
def import_personas(
    src: Path = typer.Argument(..., help="A Consistent-LLMs persona pool (<domain>__config_<domain>_personas.json) "
                               "or a folder of them."),
    out: Path = typer.Option(Path("data/personas.jsonl"), help="The persona file to write (JSON lines)."),
    domain: str = typer.Option(None, help="Keep only this domain's personas."),
    limit: int = typer.Option(0, help="Keep the first N per domain (0 = all)."),
):
    """Convert persona lists into the project's persona file ({domain, speaker, persona, meta} per
    line), for eval.personas_file."""
    from ppg.data.personas import import_personas as read_pool
    from ppg.data.personas import write_personas

    try:
        personas, merged = read_pool(src)
    except (OSError, ValueError) as e:
        fail(str(e))
    if domain:
        personas = [x for x in personas if x["domain"] == domain]
    by: dict[str, int] = {}
    kept = []
    for x in personas:
        if not limit or by.get(x["domain"], 0) < limit:
            kept.append(x)
            by[x["domain"]] = by.get(x["domain"], 0) + 1
    if not kept:
        fail(f"{src}: no persona{f' of domain {domain!r}' if domain else ''}")
    write_personas(out, kept)
    typer.echo(f"wrote {len(kept)} personas to {out}: {by}"
               + (f"; merged {merged} exact repeat{'s' * (merged != 1)} into their first" if merged else ""))
