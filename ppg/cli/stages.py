"""`ppg <stage>`: every pipeline stage as a command (import, sources, simulate, validate, build,
train, evaluate, export, returns); the judge's commands are in ppg.cli.judges."""

import json
import math
from pathlib import Path

import typer

from ppg.cli.app import PARAMS, STAGE_PARAMS, app, fail, out_folder, read_params
from ppg.data.importers import FORMATS

@app.command("import")
def import_(
    paths: list[Path] = typer.Argument(None, help="Input files (chitchat: '-' = the packaged corpus)."),
    format: str = typer.Option(None, "--format", "-f", help=" | ".join(FORMATS)),
    source: str = typer.Option(None, help="FORMAT:PATH[,PATH...] instead of --format and PATHS "
                               "(default: data.source in params.yaml)."),
    out: Path = typer.Option(None, help="Output folder (default: data.imported in params.yaml)."),
    params: Path = STAGE_PARAMS,
):
    """Convert dialogues to the canonical format: OUT/dialogues.jsonl and OUT/summary.json."""
    from ppg.data.importers import import_paths
    from ppg.data.schema import DataError

    p = read_params(params, stage=True)
    cfg = p.data
    out = out_folder(Path(out or cfg.imported))
    if format is None and (source or cfg.source) == "simulator":
        from ppg.sim.simulate import simulate as run_sim

        try:
            ds = run_sim(p.sim.domain, p.sim.dialogues, p.sim.turns, p.sim.seed, p.sim)
        except ValueError as e:
            fail(f"sim: {e}")
        _write_import(out, ds, _sim_summary(ds, p.sim.domain))
        return
    if format is None:
        from ppg.data.importers import parse_source

        try:
            format, paths = parse_source(source or cfg.source)
        except DataError as e:
            fail(str(e))
    if not paths:
        fail("paths: give at least one input file")
    try:
        dialogues, summary = import_paths(format, paths)
    except DataError as e:
        fail(str(e))
    if not dialogues:
        fail(f"{', '.join(map(str, paths))}: no dialogues found")
    _write_import(out, dialogues, {"format": format, "inputs": [str(x) for x in paths], **summary})


@app.command()
def sources(
    source: str = typer.Option(None, help="FORMAT:PATH[,PATH...] (default: data.source in params.yaml)."),
    out: Path = typer.Option(Path("data/sources.json"), help="The manifest to write."),
    models_out: Path = typer.Option(Path("data/models.json"), help="The judge's and grader's models, by content."),
    params: Path = STAGE_PARAMS,
):
    """The content of every file data.source reads (path, size, sha256), and of the model folders
    the judge and the grader read: the `import`, `judge` and `evaluate` stages depend on these
    manifests, so changed inputs re-run the pipeline wherever they live."""
    from ppg.data.importers import source_manifest
    from ppg.data.schema import DataError
    from ppg.io import atomic_open
    from ppg.judges.stage import judge_models

    p = read_params(params, stage=True)
    try:
        manifest = source_manifest(source or p.data.source)
    except DataError as e:
        fail(str(e))
    models = judge_models(p)
    for path, content in ((out, manifest), (models_out, models)):
        with atomic_open(path) as f:
            json.dump(content, f, indent=1)
    typer.echo(f"wrote {out}: {len(manifest['files'])} file(s) of {manifest['source']}; {models_out}: "
               + ", ".join(f"{role} {m['kind']}" for role, m in models.items()))


@app.command()
def simulate(
    domain: str = typer.Option(None, help="A named setting of sim.domains (chatting, therapy, education)."),
    dialogues: int = typer.Option(None, help="How many dialogues (default: sim.dialogues)."),
    turns: int = typer.Option(None, help="Turns of the persona speaker (default: sim.turns)."),
    seed: int = typer.Option(None, help="Seed (default: sim.seed); same seed, same bytes."),
    out: Path = typer.Option(..., help="Output folder: dialogues.jsonl + summary.json."),
    params: Path = PARAMS,
):
    """Simulated persona dialogues judged exactly: canonical JSONL with per-turn rewards and the
    probe windows in meta.segment_starts."""
    from ppg.sim.simulate import simulate as run_sim

    cfg = read_params(params).sim
    try:
        ds = run_sim(domain or cfg.domain, cfg.dialogues if dialogues is None else dialogues,
                     cfg.turns if turns is None else turns, cfg.seed if seed is None else seed, cfg)
    except ValueError as e:
        fail(str(e))
    _write_import(out_folder(out), ds, _sim_summary(ds, domain or cfg.domain))


def _sim_summary(ds, domain):
    from ppg.judges.base import verdict_rates

    turns = [ln for d in ds for s in d.evaluated_speakers for ln in d.turns(s)]  # judged as simulated
    return {"format": "simulator", "total": {"dialogues": len(ds), "lines": sum(len(d.lines) for d in ds),
                                             "judged_lines": len(turns), **verdict_rates(turns)},
            "by_domain": {domain: {"dialogues": len(ds)}}}


def _write_import(out: Path, dialogues, summary):
    from ppg.data.schema import write_dialogues
    from ppg.io import atomic_open

    write_dialogues(out / "dialogues.jsonl", dialogues)
    with atomic_open(out / "summary.json") as f:
        json.dump(summary, f, indent=1)
    typer.echo(json.dumps(summary["total"]))
    for domain, counts in summary["by_domain"].items():
        typer.echo(f"  {domain}: {json.dumps(counts)}")
    typer.echo(f"wrote {out / 'dialogues.jsonl'} ({len(dialogues)} dialogues)")


@app.command()
def validate(
    data: Path = typer.Argument(None, help="Judged folder (with dialogues.jsonl) or a .jsonl file "
                                "(default: judge.out in params.yaml)."),
    out: Path = typer.Option(Path("data/validation"), help="Where report.md and gx_result.json go."),
    params: Path = STAGE_PARAMS,
):
    """The validation gate (Great Expectations): exit 1 when a check fails, 2 on unreadable data."""
    from ppg.data.schema import DataError
    from ppg.data.validate import validate_dataset

    p = read_params(params, stage=True)
    try:
        ok = validate_dataset(Path(data or p.judge.out), out_folder(out), p.validate)
    except DataError as e:
        fail(str(e))
    typer.echo((out / "report.md").read_text())
    if not ok:
        typer.secho(f"validation FAILED: see {out / 'report.md'}", fg="red", err=True)
        raise typer.Exit(1)


@app.command()
def build(
    data: Path = typer.Argument(None, help="Judged folder or .jsonl (default: judge.out)."),
    out: Path = typer.Option(None, help="Output folder (default: build.out)."),
    model: str = typer.Option(None, help="Model spec whose tokenizer to use (default: model.spec)."),
    params: Path = STAGE_PARAMS,
):
    """Token sequences (one per dialogue and evaluated speaker) with turn indices and the weights of
    every policy in returns.policies; persona-disjoint splits; {split}.parquet and stats.json."""
    from ppg.data.build import build_dataset
    from ppg.data.schema import DataError
    from ppg.models import base_model, resolve_model

    p = read_params(params, stage=True)
    spec = model or p.model.spec
    try:
        stats = build_dataset(Path(data or p.judge.out), out_folder(Path(out or p.build.out)),
                              resolve_model(model) if model else base_model(p),
                              spec, p.returns.policies, p.returns.segments, p.build, p.returns.gamma)
    except (DataError, FileNotFoundError) as e:
        fail(str(e))
    typer.echo(json.dumps({k: stats[k] for k in ("sequences", "windows", "windowed_share",
                                                 "history_dropped_share", "tokenizer_hash")}))
    for name, s in stats["splits"].items():
        typer.echo(f"  {name}: {json.dumps(s)}")


@app.command()
def train(
    policy: str = typer.Option(..., help="Policy id: greedy, k<K> (e.g. k3), full, segment or bc (behaviour cloning)."),
    k: int = typer.Option(None, help="With --policy kstep: the horizon K (same as --policy k<K>)."),
    fold: int = typer.Option(None, help="Train on every fold but F (k-fold evaluation)."),
    mode: str = typer.Option("offline", help="offline (logged data, ppg build output) or online (simulator rollouts)."),
    params: Path = STAGE_PARAMS,
    progress: bool = typer.Option(True, help="Show a progress bar."),
    stop_after: int = typer.Option(None, hidden=True, help="Exit after N steps (resume tests)."),
):
    """Offline PPG on a DeepSpeed engine for one policy class. Resumes a killed run of the same
    data and config from its working folder; other data or config starts fresh (and says so).
    Several ranks: `deepspeed --num_gpus N $(which ppg) train --policy k3`."""
    from ppg.data.schema import DataError
    from ppg.returns import POLICIES, parse_policy_id, policy_id

    try:
        if policy in POLICIES and POLICIES[policy].k_prefix:  # --policy kstep --k 3 = --policy k3
            if k is None or k < 1:
                raise ValueError(f"k: --policy {policy} needs --k K with K >= 1, got {k}")
            policy = policy_id(policy, k)
        parse_policy_id(policy)
    except ValueError as e:
        fail(str(e))
    if mode not in ("offline", "online"):
        fail(f"mode: expected offline or online, got {mode!r}")
    if mode == "online" and fold is not None:
        fail("fold: folds apply to offline training on logged data, not to online rollouts")
    p = read_params(params, stage=True)
    from ppg.train.online import train_online
    from ppg.train.offline import train as run_train

    try:
        if mode == "online":
            result = train_online(p, policy, progress=progress, stop_after=stop_after)
        else:
            result = run_train(p, policy, fold, progress=progress, stop_after=stop_after)
    except (DataError, FileNotFoundError, ValueError) as e:
        fail(str(e))
    typer.echo(json.dumps({k2: result.get(k2) for k2 in ("policy", "fold", "steps", "mlflow_run_id", "final",
                                                         "stopped_at") if k2 in result}, default=str))


@app.command("evaluate")
def evaluate_(
    policy: str = typer.Option(..., help="Policy id of the trained model (models/<policy>)."),
    fold: int = typer.Option(None, help="Evaluate fold F with the model trained without it."),
    mode: str = typer.Option(None, help="online | offline | both (default: eval.mode)."),
    run: str = typer.Option(None, help="Folder under train.out to evaluate instead of <policy> (e.g. k3-online)."),
    params: Path = STAGE_PARAMS,
):
    """Consistency of a trained model: online on held-out simulator personas (exact judge, drift
    curve) and/or offline on logged verdicts (likelihood-ratio AUC, weighted NLL); eval/<policy>/."""
    from ppg.evaluate.run import evaluate

    p = read_params(params, stage=True)
    if mode:
        try:
            p.eval = type(p.eval)(**{**p.eval.__dict__, "mode": mode})
        except ValueError as e:
            fail(str(e))
    from ppg.judges.llm import JudgeError

    try:
        m = evaluate(p, policy, fold, run)
    except (FileNotFoundError, ValueError, JudgeError) as e:
        fail(str(e))
    from ppg.evaluate.report import table
    from ppg.train.offline import run_name

    typer.echo(table({run or run_name(policy, fold): m}))


@app.command("evaluate-base")
def evaluate_base_(params: Path = STAGE_PARAMS):
    """The untrained base model, measured online on the same personas and seeds as the policies:
    the control of every comparison (never registered); eval/base/."""
    from ppg.evaluate.report import table
    from ppg.evaluate.report import BASE
    from ppg.evaluate.run import evaluate_base
    from ppg.judges.llm import JudgeError

    p = read_params(params, stage=True)
    try:
        m = evaluate_base(p)
    except (FileNotFoundError, ValueError, JudgeError) as e:
        fail(str(e))
    typer.echo(table({BASE: m}))


@app.command()
def export(
    trained: Path = typer.Argument(..., help="A training output folder (adapters or weights + run.json)."),
    out: Path = typer.Option(..., help="Where the merged Hugging Face model goes."),
):
    """Merge LoRA adapters into the base model (or copy full weights): a plain safetensors folder
    that AutoModelForCausalLM.from_pretrained loads, for registration."""
    from ppg.models import export_merged

    if not (trained / "run.json").exists():
        fail(f"{trained}: no run.json (not a `ppg train` output)")
    typer.echo(f"wrote {export_merged(trained, out)}")


@app.command()
def returns(
    file: Path = typer.Argument(..., help="Dialogues in the canonical JSONL format."),
    policies: str = typer.Option(None, help="Comma-separated policy ids (greedy,k3,full,segment); "
                                 "default: returns.policies in params.yaml."),
    gamma: float = typer.Option(None, help="Discount inside the credited subset (default: params)."),
    baseline: str = typer.Option(None, help="none|batch_mean|turn_mean|group_loo|turn_kind (default: params)."),
    standardize: bool = typer.Option(None, help="Standardize the shaped weights (default: params)."),
    out: Path = typer.Option(None, help="Write one JSON row per turn with every policy's weight."),
    params: Path = PARAMS,
):
    """Per-turn partial returns w_t of each policy class for logged dialogues, and a summary."""
    import torch
    from rich.console import Console
    from rich.table import Table

    from ppg.config import ReturnsConfig, load_params
    from ppg.data.schema import DataError, read_dialogues
    from ppg.data.turns import turn_batch, turn_kind_codes
    from ppg.io import atomic_open
    from ppg.returns import policy_weights, shape_weights, trained_shaping

    try:
        cfg = load_params(params).returns
        overrides = {k: v for k, v in dict(gamma=gamma, baseline=baseline, standardize=standardize,
                                           policies=policies and policies.split(",")).items()
                     if v is not None}
        cfg = ReturnsConfig(**{**cfg.__dict__, **overrides}) if overrides else cfg
        batch = turn_batch(read_dialogues(file), cfg.segments)
    except (DataError, ValueError) as e:
        fail(str(e))
    raw = policy_weights(batch.rewards.double(), batch.mask, batch.segment_starts, cfg.policies, cfg.gamma)
    kinds = turn_kind_codes(batch.kind_names, batch.mask.shape[1])
    weights = {}
    for pid, w in raw.items():  # as offline training shapes them (bc: unshaped)
        baseline_, standardize_, clip_ = trained_shaping(pid, cfg.baseline, cfg.standardize, cfg.clip)
        weights[pid] = shape_weights(w, batch.mask, baseline_, standardize_, batch.groups, clip=clip_, kinds=kinds)

    table = Table(title=f"{file}: {len(batch.keys)} (dialogue, speaker) rows, "
                        f"{int(batch.mask.sum())} turns, {int(torch.isnan(batch.rewards[batch.mask]).sum())} "
                        f"without verdict; baseline={cfg.baseline}, standardize={cfg.standardize}, "
                        f"gamma={cfg.gamma}")
    for col in ("policy", "mean w", "std w", "min w", "max w", "unknown (NaN)"):
        table.add_column(col, justify="right" if col != "policy" else "left")
    for pid, w in weights.items():
        known = w[batch.mask & ~torch.isnan(w)]
        stat = (lambda f: f"{f(known).item():.3f}") if known.numel() else (lambda f: "-")
        table.add_row(pid, stat(torch.mean), stat(lambda x: x.std(unbiased=False)), stat(torch.min),
                      stat(torch.max), str(int((batch.mask & torch.isnan(w)).sum())))
    Console().print(table)

    if out is not None:
        with atomic_open(out) as f:
            for b, (dialogue_id, speaker) in enumerate(batch.keys):
                for t in range(int(batch.mask[b].sum())):
                    r = batch.rewards[b, t].item()
                    row = {"dialogue_id": dialogue_id, "speaker": speaker, "turn": t,
                           "reward": None if math.isnan(r) else r}
                    for pid, w in weights.items():
                        v = w[b, t].item()
                        row[pid] = None if math.isnan(v) else round(v, 6)
                    f.write(json.dumps(row) + "\n")
        typer.echo(f"wrote {out}")
