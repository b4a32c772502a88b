"""`ppg train-judge`: a per-turn reward model from logged verdicts, on the DeepSpeed engine.

Every evaluated turn with a known reward is an example: the text ppg.judges.reward_model shows
(earlier lines, persona, the line, the question) and the label reward >= 0.5 (consistent). Persona
groups (ppg.data.turns.persona_groups) are held out whole, so the validation AUC measures lines
of personas the head never saw. The base model's backbone stays frozen and only the
sequence-classification head on the last token trains (binary cross-entropy): a step costs a
forward pass, which a CPU can pay for a 135M model; with reward_model.lora_r LoRA adapters on the
attention train with it (a backward pass too), merged into the saved weights. The output folder is the judge
(judge.kind reward-model): weights, tokenizer, judge.json (AUC with a persona-group bootstrap
interval, pooled and per domain, a reliability table, what it was trained on), calibration.png;
it is logged to MLflow (and `ppg train-judge` registers it as its own model).
"""

import json
import math
import random
import time
from pathlib import Path

from ppg.data.schema import read_dialogues
from ppg.data.turns import persona_groups, persona_key
from ppg.judges.reward_model import score_texts, turn_texts
from ppg.stats import grouped_auc
from ppg.train import engine as eng


def judge_examples(dialogues, history: int) -> list[dict]:
    """One example per evaluated turn with a known reward: text, label, persona group, domain and
    the persona's key (ppg.data.turns.persona_key)."""
    out = []
    for d, g in zip(dialogues, persona_groups(dialogues)):
        for s in d.evaluated_speakers:
            key = persona_key(d.domain, d.personas[s])
            for ln, text in zip(d.turns(s), turn_texts(d, s, history)):
                if ln.reward is not None:
                    out.append({"text": text, "label": float(ln.reward >= 0.5), "group": g, "domain": d.domain,
                                "persona": key})
    return out


def split_groups(examples: list[dict], share: float, seed: int) -> tuple[list[dict], list[dict]]:
    """(train, validation): a seeded share of each domain's persona groups is held out whole (a
    domain with few personas still gets some in validation)."""
    held = set()
    for dom in sorted({e["domain"] for e in examples}):
        groups = sorted({e["group"] for e in examples if e["domain"] == dom})
        random.Random(f"{seed}:{dom}").shuffle(groups)
        held |= set(groups[:max(1, math.ceil(share * len(groups)))])
    return [e for e in examples if e["group"] not in held], [e for e in examples if e["group"] in held]


def reliability(p: list[float], y: list[float], bins: int = 10) -> tuple[list[dict], float]:
    """Per probability bin: mean predicted, observed share, count; and the expected calibration
    error (the count-weighted mean gap)."""
    rows = []
    for b in range(bins):
        idx = [i for i, x in enumerate(p) if b / bins <= x < (b + 1) / bins or (b == bins - 1 and x == 1.0)]
        if idx:
            rows.append({"bin": b, "predicted": sum(p[i] for i in idx) / len(idx),
                         "observed": sum(y[i] for i in idx) / len(idx), "n": len(idx)})
    ece = sum(r["n"] * abs(r["predicted"] - r["observed"]) for r in rows) / max(len(p), 1)
    return rows, ece


def held_out_scores(val: list[dict], p_val: list[float], min_contradictions: int, seed: int) -> dict:
    """AUC of P(consistent) against the logged verdicts, pooled and per domain (a domain with fewer
    contradicting lines than min_contradictions is refused, not scored), and calibration."""
    turns = [{"group": e["group"], "reward": e["label"], "score": q, "domain": e["domain"]} for e, q in zip(val, p_val)]
    rows, ece = reliability(p_val, [e["label"] for e in val])
    out = {"auc": grouped_auc(turns, min_contradictions, seed), "lines": len(val),
           "contradictions": sum(e["label"] < 0.5 for e in val), "calibration": rows, "ece": ece, "by_domain": {}}
    for dom in sorted({e["domain"] for e in val}):
        part = [t for t in turns if t["domain"] == dom]
        out["by_domain"][dom] = {"lines": len(part), "auc": grouped_auc(part, min_contradictions, seed)}
    return out


def plot_calibration(rows: list[dict], path: Path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4, 4))
    ax.plot([0, 1], [0, 1], ls="--", c="grey")
    ax.plot([r["predicted"] for r in rows], [r["observed"] for r in rows], marker="o")
    ax.set(xlabel="predicted P(consistent)", ylabel="observed share consistent", xlim=(0, 1), ylim=(0, 1),
           title="Reward model calibration (held-out personas)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def train_judge(p, data: Path, out: Path, progress: bool = True) -> dict:
    """Train the reward model on DATA (a folder with dialogues.jsonl, or a .jsonl file) into OUT;
    ppg.registry.register_judge registers it."""
    import torch
    from transformers import AutoModelForSequenceClassification

    from ppg import tracking
    from ppg.io import content_hash
    from ppg.models import atomic_folder, base_model, load_tokenizer, resolve_model

    rm, t0 = p.judge.reward_model, time.perf_counter()
    src = data / "dialogues.jsonl" if data.is_dir() else data
    train, val = split_groups(judge_examples(read_dialogues(src), rm.history), rm.validation, rm.seed)
    for name, part in (("training", train), ("validation", val)):
        if len({e["label"] for e in part}) < 2:
            raise ValueError(f"{src}: the {name} persona groups need consistent and contradicting lines with "
                             f"verdicts (got {len(part)} lines, labels {sorted({e['label'] for e in part})})")
    base = resolve_model(rm.base) if rm.base else base_model(p)
    deepspeed, _, world = eng.setup_distributed()
    if world > 1:
        raise ValueError("train-judge runs on one rank (the head is small; the backbone only runs forward)")
    eng.seed_all(rm.seed)
    tok = load_tokenizer(base)
    tok.padding_side, tok.truncation_side = "right", "left"
    model = AutoModelForSequenceClassification.from_pretrained(str(base), num_labels=1)
    model.config.pad_token_id = tok.pad_token_id
    if rm.lora_r:  # PEFT's SEQ_CLS task trains the score head beside the adapters
        from peft import LoraConfig as PeftLoraConfig
        from peft import get_peft_model

        model = get_peft_model(model, PeftLoraConfig(task_type="SEQ_CLS", r=rm.lora_r, lora_alpha=2 * rm.lora_r,
                                                     lora_dropout=0.0,
                                                     target_modules=["q_proj", "k_proj", "v_proj", "o_proj"]))
    else:
        for name, q in model.named_parameters():
            q.requires_grad = name.startswith("score")  # the frozen backbone needs no backward pass
    ds = {k: v for k, v in p.train.deepspeed.items() if k != "scheduler"}
    opt = ds.get("optimizer", {"type": "AdamW"})
    ds["optimizer"] = {**opt, "params": {**opt.get("params", {}), "lr": rm.lr}}
    engine = eng.start(deepspeed, model, eng.ds_config(dict(ds, gradient_accumulation_steps=1), rm.batch_size, 1,
                                                       rm.steps))
    c = tracking.client(p.mlflow)
    run_id = tracking.open_run(c, p.mlflow, name="train-judge", tags={"ppg.stage": "train-judge"},
                               params={"base": str(base), "data": str(src), "train_lines": len(train),
                                       "validation_lines": len(val),
                                       **{f"reward_model.{k}": v for k, v in vars(rm).items()}})
    bar = eng.progress_bar(progress, rm.steps, 0, "train-judge")
    rng, history = random.Random(rm.seed), []
    engine.train()
    for step in range(1, rm.steps + 1):
        batch = [train[rng.randrange(len(train))] for _ in range(rm.batch_size)]
        enc = tok([e["text"] for e in batch], return_tensors="pt", padding=True, truncation=True,
                  max_length=rm.max_length).to(engine.device)
        logits = engine(**enc).logits[:, 0].float()
        y = torch.tensor([e["label"] for e in batch], device=logits.device)
        loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, y)
        engine.backward(loss)
        engine.step()
        history.append(loss.item())
        tracking.log_metrics(c, run_id, {"loss": history[-1]}, step)
        if bar:
            bar.update(1)
            bar.set_postfix(loss=f"{history[-1]:.4f}")
    if bar:
        bar.close()
    engine.eval()
    t_score = time.perf_counter()
    p_val = score_texts(engine.module, tok, [e["text"] for e in val], rm.max_length)
    lines_per_s = len(val) / (time.perf_counter() - t_score)
    held = held_out_scores(val, p_val, p.eval.min_contradictions, rm.seed)
    card = {"base": str(p.judge.reward_model.base or p.model.spec), "data": str(src), "data_hash": content_hash(src),
            "train_lines": len(train), "steps": rm.steps, "loss_history": history, "validation": held,
            "train_personas": sorted({e["persona"] for e in train}),  # what another judge must not share
            "scored_lines_per_s": lines_per_s, "config": vars(rm), "wall_s": time.perf_counter() - t0}

    def build(tmp):
        # adapters merged: the judge loads as a plain sequence-classification model either way
        (engine.module.merge_and_unload() if rm.lora_r else engine.module).save_pretrained(tmp)
        tok.save_pretrained(tmp)
        card["fingerprint"] = content_hash(*sorted(Path(tmp).glob("*.safetensors")))
        (Path(tmp) / "judge.json").write_text(json.dumps(card, indent=1, default=str))
        plot_calibration(held["calibration"], Path(tmp) / "calibration.png")

    atomic_folder(out, build)
    auc = held["auc"].get("mean")
    tracking.log_metrics(c, run_id, {"validation.auc": auc, "validation.auc.lo": held["auc"].get("lo"),
                                     "validation.auc.hi": held["auc"].get("hi"), "validation.ece": held["ece"],
                                     "scored_lines_per_s": lines_per_s}, rm.steps)
    c.log_artifact(run_id, str(out / "judge.json"))
    c.log_artifact(run_id, str(out / "calibration.png"))
    c.set_terminated(run_id, "FINISHED")
    engine.destroy()
    return {**card, "mlflow_run_id": run_id}

