"""`ppg` commands of the judges: judge (the pipeline's judge stage), train-judge (the per-turn
reward model) and serve-judge (a local OpenAI-compatible endpoint for the LLM judge)."""

import json
import os
from pathlib import Path

import typer

from ppg.cli.app import PARAMS, STAGE_PARAMS, app, fail, out_folder, read_params


@app.command()
def judge(
    data: Path = typer.Argument(None, help="Imported folder (with dialogues.jsonl) or a .jsonl file "
                                "(default: data.imported in params.yaml)."),
    out: Path = typer.Option(None, help="Output folder (default: judge.out in params.yaml)."),
    params: Path = STAGE_PARAMS,
    progress: bool = typer.Option(True, help="Show a progress bar."),
):
    """Per-turn rewards for the turns that arrive without them (judge section of params.yaml):
    personal data redacted, then judge.kind scores the evaluated speakers' null-reward turns
    through the verdict cache; OUT/dialogues.jsonl and OUT/summary.json, an MLflow run. A judge
    that fails after its retries writes nothing (what it answered stays cached)."""
    from ppg.data.schema import DataError
    from ppg.judges.llm import JudgeError
    from ppg.judges.stage import judge_dataset

    p = read_params(params, stage=True)
    out = out_folder(Path(out or p.judge.out))
    try:
        summary = judge_dataset(p, Path(data or p.data.imported), out, progress)
    except (DataError, JudgeError, FileNotFoundError) as e:
        fail(str(e))
    typer.echo(json.dumps({k: summary[k] for k in ("dialogues", "turns", "null_rewards", "redacted", "counts",
                                                   "wall_s")}))
    typer.echo(f"wrote {out / 'dialogues.jsonl'} (judge: {json.dumps(summary['judge'])})")


@app.command("train-judge")
def train_judge(
    data: Path = typer.Argument(..., help="Dialogues with logged verdicts: a folder with dialogues.jsonl or a .jsonl "
                                "(e.g. `ppg import -f consistent-llms` output)."),
    out: Path = typer.Option(None, help="Output folder (default: judge.reward_model.path)."),
    params: Path = PARAMS,
    register: bool = typer.Option(True, help="Register it in MLflow as ppg-judge."),
    progress: bool = typer.Option(True, help="Show a progress bar."),
):
    """A per-turn reward model from logged verdicts (judge.reward_model): a score head on the frozen
    base model, persona groups held out for its AUC and calibration; judge.kind reward-model uses it."""
    from ppg.data.schema import DataError
    from ppg.train.judge import train_judge as run

    p = read_params(params)
    out = out_folder(Path(out or p.judge.reward_model.path))
    try:
        card = run(p, data, out, progress)
    except (DataError, FileNotFoundError, ValueError) as e:
        fail(str(e))
    if register:
        from ppg.registry import register_judge

        card["registered"] = register_judge(p, out, card["mlflow_run_id"])
    v = card["validation"]
    typer.echo(json.dumps({"validation_auc": v["auc"], "ece": round(v["ece"], 4), "lines": v["lines"],
                           "by_domain": {k: x["auc"] for k, x in v["by_domain"].items()},
                           "registered": card.get("registered")}, default=str))
    typer.echo(f"wrote {out}")


@app.command("serve-judge")
def serve_judge(
    model: str = typer.Option("smollm2-135m", help="Model spec that answers (tiny, smollm2-135m, a folder)."),
    name: str = typer.Option("judge", help="The model id requests must name: judge.model in params.yaml."),
    host: str = typer.Option("127.0.0.1", help="Address to bind (loopback by default)."),
    port: int = typer.Option(8765, help="Port."),
    batching: bool = typer.Option(True, "--batching/--no-batching", help="Continuous batching (paged attention)."),
    device: str = typer.Option("auto", help="cpu, cuda:0, ... (auto: the accelerator when there is one)."),
):
    """A local OpenAI-compatible chat-completions server for the LLM judge (offline, real HTTP):
    `transformers serve` pinned to MODEL under NAME. Blocks until stopped."""
    from ppg.judges.serve import serve_command, serve_env
    from ppg.models import resolve_model

    try:
        argv, cwd = serve_command(resolve_model(model), name, host, port, batching, device)
    except (FileNotFoundError, ValueError) as e:
        fail(str(e))
    typer.echo(f"serving {model} as {name!r} at http://{host}:{port}/v1 (transformers serve; Ctrl-C stops)", err=True)
    os.chdir(cwd)
    os.execve(argv[0], argv, serve_env())
