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
it is logged to MLflow (and `ppg train-judge` registers it as its own model). Checkpoints and
resume as the policy trainers have them (ppg.train.run.TrainingRun).
"""

import json
import math
import random
import time
from dataclasses import replace
from pathlib import Path

from ppg.data.schema import read_dialogues
from ppg.data.turns import persona_groups, persona_key
from ppg.judges.reward_model import score_texts, turn_texts
from ppg.stats import grouped_auc
from ppg.train import engine as eng
from ppg.train.run import TrainingRun


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


def judge_sets(src: Path, history: int, share: float, seed: int) -> tuple[list[dict], list[dict]]:
    """(train, validation) examples of the dialogues in src (split_groups), each with both labels."""
    train, val = split_groups(judge_examples(read_dialogues(src), history), share, seed)
    for name, part in (("training", train), ("validation", val)):
        if len({e["label"] for e in part}) < 2:
            raise ValueError(f"{src}: the {name} persona groups need consistent and contradicting lines with "
                             f"verdicts (got {len(part)} lines, labels {sorted({e['label'] for e in part})})")
    return train, val


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


def train_judge(p, data: Path, out: Path, progress: bool = True, stop_after: int | None = None) -> dict:
    """Train the reward model on DATA (a folder with dialogues.jsonl, or a .jsonl file) into OUT;
    ppg.registry.register_judge registers it. Resumes from the working folder of its identity
    (train.workdir/judge) like the policy trainers; stop_after=N exits after N steps."""
    import torch

    from ppg.io import content_hash
    from ppg.models import base_model, load_tokenizer, resolve_model

    rm, t0 = p.judge.reward_model, time.perf_counter()
    src = data / "dialogues.jsonl" if data.is_dir() else data
    train, val = judge_sets(src, rm.history, rm.validation, rm.seed)
    base = resolve_model(rm.base) if rm.base else base_model(p)
    deepspeed, _, _ = eng.setup_distributed(one_rank="train-judge runs on one rank (the head is small; the "
                                                      "backbone only runs forward)")
    ds = judge_deepspeed(p.train.deepspeed, rm.lr)
    # where it is written and how often it is saved change nothing it trains
    knobs = {k: v for k, v in vars(rm).items() if k not in ("path", "checkpoint_every")}
    ident = {"mode": "judge", "base": content_hash(base), "data": content_hash(src), "code": eng.code_hash(),
             "reward_model": knobs, "deepspeed": ds}
    run = TrainingRun("judge", ident, replace(p.train, checkpoint_every=rm.checkpoint_every), rm.steps, {}, rm.seed,
                      stop_after=stop_after)
    tok = load_tokenizer(base)
    tok.padding_side, tok.truncation_side = "right", "left"
    engine = run.start(deepspeed, judge_model(base, tok.pad_token_id, rm.lora_r),
                       eng.ds_config(ds, rm.batch_size, 1, rm.steps))
    run.track(p.mlflow, tags={"ppg.stage": "train-judge"}, inputs={"training": str(src), "base_model": str(base)},
              params={"base": str(base), "data": str(src), "train_lines": len(train), "validation_lines": len(val),
                      **{f"reward_model.{k}": v for k, v in vars(rm).items()}}, progress=progress)
    rng = random.Random(rm.seed)  # the batch sampler: its state travels in the checkpoints
    if "sampler" in run.state:
        rng.setstate(run.state["sampler"])
    while run.state["step"] < rm.steps:
        batch = [train[rng.randrange(len(train))] for _ in range(rm.batch_size)]
        enc = tok([e["text"] for e in batch], return_tensors="pt", padding=True, truncation=True,
                  max_length=rm.max_length).to(engine.device)
        logits = engine(**enc).logits[:, 0].float()
        y = torch.tensor([e["label"] for e in batch], device=logits.device)
        loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, y)
        engine.backward(loss)
        engine.step()
        run.state["history"].append(loss.item())
        run.state["sampler"] = rng.getstate()
        if run.step_done({"loss": loss.item()}, loss=f"{loss.item():.4f}"):
            return run.stopped()
    card = judge_card(p, run, tok, src, train, val)
    card["wall_s"] = time.perf_counter() - t0
    held = card["validation"]
    run.log({"validation.auc": held["auc"].get("mean"), "validation.auc.lo": held["auc"].get("lo"),
             "validation.auc.hi": held["auc"].get("hi"), "validation.ece": held["ece"],
             "scored_lines_per_s": card["scored_lines_per_s"]})

    def also(folder: Path):
        card["fingerprint"] = content_hash(*sorted(folder.glob("*.safetensors")))  # the judge's identity
        (folder / "judge.json").write_text(json.dumps(card, indent=1, default=str))
        plot_calibration(held["calibration"], folder / "calibration.png")

    # adapters merged: the judge loads as a plain sequence-classification model either way
    run.finish(tok, out, None, merge=bool(rm.lora_r), also=also, artifacts=("judge.json", "calibration.png"))
    return {**card, "mlflow_run_id": run.run_id}


def judge_deepspeed(deepspeed_cfg: dict, lr: float) -> dict:
    """train.deepspeed for the reward model: its own learning rate, constant (no scheduler), and
    no accumulation."""
    ds = {k: v for k, v in deepspeed_cfg.items() if k != "scheduler"}
    opt = ds.get("optimizer", {"type": "AdamW"})
    return dict(ds, optimizer={**opt, "params": {**opt.get("params", {}), "lr": lr}}, gradient_accumulation_steps=1)


def judge_model(base: Path, pad_token_id: int, lora_r: int):
    """The sequence-classification model on the base: a frozen backbone under a trainable head,
    or with lora_r LoRA adapters on the attention training beside the head."""
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(str(base), num_labels=1)
    model.config.pad_token_id = pad_token_id
    if lora_r:  # PEFT's SEQ_CLS task trains the score head beside the adapters
        from peft import LoraConfig as PeftLoraConfig
        from peft import get_peft_model

        return get_peft_model(model, PeftLoraConfig(task_type="SEQ_CLS", r=lora_r, lora_alpha=2 * lora_r,
                                                    lora_dropout=0.0,
                                                    target_modules=["q_proj", "k_proj", "v_proj", "o_proj"]))
    for name, q in model.named_parameters():
        q.requires_grad = name.startswith("score")  # the frozen backbone needs no backward pass
    return model


def judge_card(p, run, tok, src: Path, train: list[dict], val: list[dict]) -> dict:
    """judge.json: held-out scores of the trained model (eval mode) and what it was trained on."""
    from ppg.io import content_hash

    rm = p.judge.reward_model
    run.engine.eval()
    t_score = time.perf_counter()
    p_val = score_texts(run.engine.module, tok, [e["text"] for e in val], rm.max_length)
    lines_per_s = len(val) / (time.perf_counter() - t_score)
    return {"base": str(rm.base or p.model.spec), "data": str(src), "data_hash": content_hash(src),
            "train_lines": len(train), "steps": run.state["step"], "loss_history": run.state["history"],
            "validation": held_out_scores(val, p_val, p.eval.min_contradictions, rm.seed),
            "train_personas": sorted({e["persona"] for e in train}),  # what another judge must not share
            "scored_lines_per_s": lines_per_s, "config": vars(rm), "run_fingerprint": run.fp}
