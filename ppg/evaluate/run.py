"""Evaluation of a trained persona model, as params.yaml's eval section says:

online   on held-out simulator personas (a seed no training set uses): play dialogues against the
         simulator's partner, judge every turn exactly (ppg.evaluate.online);
offline  on logged data with verdicts: likelihood-ratio AUC and weighted NLL (ppg.evaluate.offline).

The evaluate stage and the promotion gate both measure through `measure`.
"""

import json
from pathlib import Path

from ppg.data.schema import write_dialogues
from ppg.evaluate.offline import offline_metrics, offline_turns
from ppg.evaluate.online import backstory_qa, llm_metrics, online_metrics, persona_qa
from ppg.evaluate.report import BASE, log_evaluation, plot_drift, table
from ppg.io import atomic_open
from ppg.judges.independent import check_independent, reward_model_folders
from ppg.models import base_model, eval_device, eval_dtype, load_tokenizer
from ppg.rollout import GenerationConfig, play
from ppg.partner import RolloutWorld, qa_questions
from ppg.partner_models import check_drops
from ppg.train.offline import run_name


def load_trained(p, name: str):
    """(model, reference, tokenizer, lora) for a `ppg train` output; the reference is the base
    model (for LoRA: the same model with its adapters switched off)."""
    from transformers import AutoModelForCausalLM

    trained = Path(p.train.out) / name
    dev = eval_device()  # a GPU run scores on the GPU too, not on the host's cores
    if not (trained / "run.json").exists():
        raise FileNotFoundError(f"{trained}: no trained model (run `ppg train --policy {name.split('-fold')[0]}`)")
    tok = load_tokenizer(trained)
    if (trained / "adapter_config.json").exists():
        from peft import AutoPeftModelForCausalLM

        model = AutoPeftModelForCausalLM.from_pretrained(str(trained)).to(dev).eval()
        return model, None, tok, True
    model = AutoModelForCausalLM.from_pretrained(str(trained)).to(dev).eval()
    ref = AutoModelForCausalLM.from_pretrained(str(base_model(p))).to(dev).eval()
    return model, ref, tok, False


def sampling_model(model, lora: bool, dtype, keep: bool):
    """The model rollouts and Q&A sample from: LoRA adapters folded into the weights (no adapter
    matmuls for every token) and cast to dtype; a copy when keep (offline scoring still needs
    the float32 model, with its adapters to switch off for the reference)."""
    import copy

    import torch

    if not lora and dtype == torch.float32:
        return model
    m = copy.deepcopy(model) if keep else model
    if lora:
        m = m.merge_and_unload()
    return m.to(dtype).eval()


def measure(p, model, tok, split: str, policy: str, ref=None, lora: bool = False, fold: int | None = None,
            seed: int | None = None, trained_by: list[dict] = (), ref_cache: dict | None = None):
    """Metrics of a loaded model on a split, as p.eval says: (metrics, judged dialogues or None,
    scored logged turns or None). The evaluate stage and the promotion gate both measure through
    here; seed overrides the split's persona seed (the gate draws fresh test personas).
    trained_by: identities of judges the model trained against beyond its data's (online PPG):
    real-persona rollouts are graded by none of them (ppg.judges.independent). ref_cache: the
    reference's scores of logged rows, shared by calls that score the same rows against the same
    reference (ppg.evaluate.offline.offline_turns)."""
    import pyarrow.parquet as pq

    cfg, metrics, dialogues, turns = p.eval, {"split": split}, None, None
    if cfg.mode in ("online", "both"):
        dtype, why = eval_dtype(cfg.dtype, next(model.parameters()).device)
        offline_model = model
        model = sampling_model(model, lora, dtype, keep=cfg.mode == "both")
        gen = GenerationConfig(**cfg.generation)
        seed = cfg.persona_seed(split) if seed is None else seed
        grader = p.eval_judge()
        world = RolloutWorld(p, cfg.partner, split, gen, cfg.domain, cfg.turns, judge_cfg=grader,
                             personas_file=cfg.personas_file)
        eps, partner, judge = world.draw(seed, cfg.personas, 1)
        if cfg.partner == "llm":
            trained_by = [*world.rewards_by, *trained_by]
            check_independent(judge.identity(), trained_by, reward_model_folders(p.judge, grader))
        domain = eps[0].domain
        stats = {}
        dialogues = play(model, tok, eps, partner, judge, gen, seed, stats=stats)
        drops = check_drops(stats["dropped"], len(eps), cfg.partner_endpoint, "evaluation") \
            if cfg.partner == "llm" else None
        qa, qa_unknown = None, None
        if cfg.qa and cfg.partner == "simulator":
            qa = backstory_qa(model, tok, dialogues, gen)
        elif cfg.qa:
            qa, qa_unknown = persona_qa(model, tok, dialogues, judge, gen, qa_questions(cfg.qa_questions))
        metrics["online"] = {"domain": domain, "seed": seed, "partner": cfg.partner, "judge": judge.identity(),
                             # who played the user, and the dialogues it dropped (left out of every metric)
                             "partner_identity": world.partner_identity(), "partner_drops": drops,
                             "dtype": {"dtype": str(dtype).removeprefix("torch."), "why": why},
                             "rewards_by": list(trained_by) if cfg.partner == "llm" else None,
                             **online_metrics(dialogues, qa, cfg.engagement_words)}
        if qa_unknown is not None:
            metrics["online"]["qa_unknown"] = qa_unknown  # answers the judge gave no verdict (not scored)
        if cfg.llm_judge:
            metrics["online"]["llm"] = llm_metrics(dialogues, p.judge)
        model = offline_model
    if cfg.mode in ("offline", "both"):
        path = Path(p.train.data) / (f"{p.train.split}.parquet" if fold is not None else f"{split}.parquet")
        table_ = pq.read_table(path)
        rows = table_.to_pylist()
        rows = [r for r in rows if r["fold"] == fold] if fold is not None else rows
        turns = offline_turns(model, ref, lora, tok, rows, policy, ref_cache=ref_cache)
        metrics["offline"] = {"data": str(path), "fold": fold,
                              "domain": rows[0]["domain"] if rows and "domain" in table_.column_names else None,
                              **offline_metrics(turns, cfg.min_contradictions)}
    return metrics, dialogues, turns


def evaluate(p, policy: str, fold: int | None = None, run: str | None = None, log: bool = True) -> dict:
    """Evaluate models/<policy>[-fold<F>] (or models/<run>, e.g. k3-online) on eval.split as p.eval
    says; write eval/<name>/ files and log them into the model's MLflow run. policy picks the
    weights of the offline weighted NLL."""
    cfg = p.eval
    name = run or run_name(policy, fold)
    model, ref, tok, lora = load_trained(p, name)
    trained = json.loads((Path(p.train.out) / name / "run.json").read_text())
    m, dialogues, _ = measure(p, model, tok, cfg.split, policy, ref, lora, fold,
                              trained_by=[trained["reward_judge"]] if trained.get("reward_judge") else [])
    metrics = {"policy": policy, "fold": fold, "model": p.model.spec, "mlflow_run_id": trained.get("mlflow_run_id"),
               "primary": cfg.primary, **m}
    out = write_evaluation(Path(cfg.out) / name, name, metrics, dialogues)
    if log and metrics["mlflow_run_id"]:
        log_evaluation(p, metrics["mlflow_run_id"], metrics, out)
    return metrics


def evaluate_base(p) -> dict:
    """The untrained base model (model.base) measured online as the policies are: the same split,
    personas, seeds, partner and grader. The control every policy's table row is compared with;
    never a registration candidate. Offline metrics compare a policy with this model, so it has
    none of its own. Writes eval.out/base/."""
    from dataclasses import replace

    from transformers import AutoModelForCausalLM

    cfg, folder = p.eval, base_model(p)
    metrics = {"policy": BASE, "fold": None, "model": p.model.spec, "mlflow_run_id": None, "primary": cfg.primary,
               "control": "the untrained base model", "split": cfg.split}
    dialogues = None
    if cfg.mode != "offline":
        model = AutoModelForCausalLM.from_pretrained(str(folder)).to(eval_device()).eval()
        p.eval = replace(cfg, mode="online")  # in place, as `ppg evaluate --mode` does: a copy of the
        m, dialogues, _ = measure(p, model, load_tokenizer(folder), cfg.split, BASE)  # whole tree reads every param
        p.eval = cfg
        metrics.update(m)
    write_evaluation(Path(cfg.out) / BASE, BASE, metrics, dialogues)
    return metrics


def write_evaluation(out: Path, name: str, metrics: dict, dialogues) -> Path:
    """An evaluation's folder: dialogues.jsonl (when there were rollouts), metrics.json,
    table.md and drift.png."""
    if dialogues is not None:
        write_dialogues(out / "dialogues.jsonl", dialogues)
    with atomic_open(out / "metrics.json") as f:
        json.dump(metrics, f, indent=1)
    with atomic_open(out / "table.md") as f:
        f.write(table({name: metrics}))
    plot_drift({name: metrics}, out / "drift.png")
    return out
