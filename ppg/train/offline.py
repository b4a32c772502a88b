"""Offline PPG training: reward-weighted likelihood with partial-return weights, on a DeepSpeed
engine (ppg.train.engine), resumable.

    loss = -(1/N) sum_t w_t log pi(a_t | x_t)      w_t = shaped partial return of the policy class

Around the loop, ppg.train.run.TrainingRun (identity, checkpoints, resume, MLflow, output).
One code path: DeepSpeed's config (params.yaml train.deepspeed) decides ZeRO stage, bf16,
accumulation, clipping, optimizer and schedule. With several ranks the data is sharded by batch
across them and only rank 0 writes.
"""

import time
from dataclasses import asdict
from pathlib import Path

import torch

from ppg.data.build import check_tokenizer
from ppg.train import engine as eng
from ppg.train.run import TrainingRun
from ppg.train.batching import collate, known_turns, length_batches, load_examples
from ppg.losses import offline_ppg_loss, target_logprobs
from ppg.models import base_model, load_model, load_tokenizer, tokenizer_hash
from ppg.returns import parse_policy_id, trained_shaping


def _new_window() -> dict:
    """What the micro-batches of one optimizer step add up to, for logging."""
    return {"loss": 0.0, "nll": 0.0, "tokens": 0, "padded": 0, "turns": 0, "excluded": 0, "t0": time.perf_counter()}


def run_name(policy: str, fold: int | None) -> str:
    return policy if fold is None else f"{policy}-fold{fold}"


def run_identity(p, policy: str, fold, model_dir: Path, split: Path, world: int, total: int) -> dict:
    """What a run's result depends on: the content of the built split, of the base model and of
    the training code, and every knob (the step budget included). Two runs with equal identities
    train the same weights, so only such a checkpoint is a resume point. Bookkeeping knobs (where
    outputs go, how often to checkpoint) are left out. Computed on rank 0 and broadcast, so every
    rank hashes nothing and all agree on one working folder."""
    import torch.distributed as dist

    from ppg.io import content_hash

    ident = [None]
    if not dist.is_initialized() or dist.get_rank() == 0:
        baseline, standardize, clip = trained_shaping(policy, p.returns.baseline, p.returns.standardize, p.returns.clip)
        bookkeeping = ("checkpoint_every", "keep_checkpoints", "out", "workdir", "launcher")  # world_size stays
        ident[0] = {"model": p.model.spec, "base_model": content_hash(model_dir), "data": content_hash(split),
                    "code": eng.code_hash(), "policy": policy, "fold": fold, "total_steps": total, "world_size": world,
                    "returns": {"baseline": baseline, "standardize": standardize, "clip": clip},
                    "train": {k: v for k, v in asdict(p.train).items() if k not in bookkeeping}}
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.broadcast_object_list(ident, src=0)
    return ident[0]


def train(p, policy: str, fold: int | None = None, progress: bool = True, stop_after: int | None = None) -> dict:
    """Train one policy class (params p: ppg.config.Params). Resumes from the working folder of
    this run's fingerprint (run_identity) when a complete checkpoint is there, else starts fresh in
    a new MLflow run. stop_after=N exits after N optimizer steps (tests of resume)."""
    kind, k = parse_policy_id(policy)
    cfg, name = p.train, run_name(policy, fold)
    model_dir, data = base_model(p), Path(cfg.data)
    check_tokenizer(data / f"{cfg.split}.parquet", model_dir)
    baseline, standardize, clip = trained_shaping(policy, p.returns.baseline, p.returns.standardize,
                                                  p.returns.clip)  # bc: unshaped
    examples, wstats = load_examples(data, cfg.split, policy, baseline, standardize,
                                     fold, cfg.subsample, cfg.seed, clip)
    deepspeed, rank, world = eng.setup_distributed()
    per_step = int(cfg.deepspeed.get("gradient_accumulation_steps", 1)) * world  # micro-batches, all ranks
    lengths = [len(e.input_ids) for e in examples]
    steps_per_epoch = len(length_batches(lengths, cfg.batch_size, cfg.bucket_batches, cfg.seed, 0)) // per_step
    if steps_per_epoch < 1:
        raise ValueError(f"train: {len(examples)} sequences make no full step of {per_step} batches "
                         f"of {cfg.batch_size}; lower train.batch_size or gradient_accumulation_steps")
    total = cfg.max_steps or cfg.epochs * steps_per_epoch
    ident = run_identity(p, policy, fold, model_dir, data / f"{cfg.split}.parquet", world, total)
    run = TrainingRun(name, ident, cfg, total, {"epoch": 0, "batch": 0, "tokens": 0}, cfg.seed, rank == 0, stop_after)
    run.start(deepspeed, load_model(model_dir, cfg.lora), eng.ds_config(cfg.deepspeed, cfg.batch_size, world, total),
              cfg.gradient_checkpointing)
    tok = load_tokenizer(model_dir)
    run.track(p.mlflow, progress=progress, inputs={"training": str(data), "base_model": str(model_dir)},
              tags={"ppg.stage": "train", "ppg.policy": policy, "ppg.policy_class": kind, "ppg.k": str(k or ""),
                    "ppg.fold": str(fold if fold is not None else "")},
              params={"policy": policy, "model": p.model.spec, "fold": fold, **flat_params("train", asdict(cfg)),
                      "baseline": baseline, "standardize": standardize, "world_size": world})
    if not run.resumed:
        run.log({key: wstats[key] for key in ("sequences", "turns", "nan_weight_turns", "weight_mean", "weight_std")})
        for t, m in enumerate(wstats["weight_mean_by_turn"]):
            run.log({"weight_mean_by_turn": m}, t)
    last = {}
    while run.state["step"] < total:
        last, stop = train_epoch(run, tok, examples, lengths, cfg, rank, world, last)
        if stop:
            return run.stopped()
    result = {"policy": policy, "fold": fold, **run.record(), "tokens": run.state["tokens"],
              "model_spec": p.model.spec, "loss_history": run.state["history"],
              "tokenizer_hash": tokenizer_hash(model_dir), "final": last, "weights": wstats}
    run.finish(tok, Path(cfg.out) / name, result)
    return result


def train_epoch(run, tok, examples, lengths, cfg, rank: int, world: int, last: dict) -> tuple[dict, bool]:
    """This rank's share of the current epoch's batches, from state["batch"] on, one optimizer
    step per `accum` micro-batches. (the last step's metrics, whether stop_after was reached)"""
    engine, state = run.engine, run.state
    accum = int(cfg.deepspeed.get("gradient_accumulation_steps", 1))
    batches = length_batches(lengths, cfg.batch_size, cfg.bucket_batches, cfg.seed, state["epoch"])
    mine = batches[:len(batches) // (accum * world) * accum * world][rank::world]  # whole steps only
    window = _new_window()
    while state["batch"] < len(mine) and state["step"] < run.total:
        if state["batch"] % accum == 0:  # an optimizer step starts: count its turns on every rank
            denominator = step_denominator(
                [examples[i] for bi in mine[state["batch"]:state["batch"] + accum] for i in bi], accum, world)
        b = collate([examples[i] for i in mine[state["batch"]]], tok.pad_token_id)
        b = {key: v.to(engine.device) if torch.is_tensor(v) else v for key, v in b.items()}
        logp = target_logprobs(engine.module, b["input_ids"], b["attention_mask"], b["turn_index"])
        out = offline_ppg_loss(logp, b["turn_index"], b["weights"], cfg.reduction, denominator)
        engine.backward(out.loss)
        boundary = engine.is_gradient_accumulation_boundary()
        norm = eng.grad_norm(engine) if boundary else None
        engine.step()
        target = b["turn_index"] >= 0
        window["loss"] += out.loss.item() / accum
        window["nll"] += float(-(logp.detach() * target).sum() / target.sum().clamp(min=1)) / accum
        for key in ("tokens", "padded"):
            window[key] += b[key]
        window["turns"] += out.turns
        window["excluded"] += out.excluded
        state["batch"] += 1
        state["tokens"] += b["tokens"]
        if not boundary:
            continue
        last = step_metrics(window, engine, norm, state["epoch"], world)
        state["history"].append(last["loss"])
        if run.step_done(last, loss=f"{last['loss']:.4f}", tok_s=f"{last['tokens_per_s']:.0f}"):
            return last, True
        window = _new_window()
    if state["batch"] >= len(mine):
        state["epoch"], state["batch"] = state["epoch"] + 1, 0
    return last, False


def step_metrics(window: dict, engine, norm, epoch: int, world: int) -> dict:
    """What one optimizer step logs, over every rank's micro-batches (sums; the losses averaged)."""
    if world > 1:
        keys = ("loss", "nll", "tokens", "padded", "turns", "excluded")
        t = torch.tensor([float(window[key]) for key in keys], dtype=torch.float64)
        torch.distributed.all_reduce(t)
        window.update({key: float(v) for key, v in zip(keys, t)})
        window["loss"], window["nll"] = window["loss"] / world, window["nll"] / world
    dt = time.perf_counter() - window["t0"]
    return {"loss": window["loss"], "nll": window["nll"], "lr": engine.get_lr()[0], "grad_norm": norm,
            "tokens_per_s": window["tokens"] / dt, "padding_share": 1 - window["tokens"] / max(window["padded"], 1),
            "turns": window["turns"], "excluded_turns": window["excluded"], "epoch": epoch}


def step_denominator(step_examples, accum: int, world: int) -> float:
    """The micro-batch loss's divisor that makes an optimizer step's gradient the mean over ALL its
    turns, N_step (every accumulation micro-batch of every rank): sum(w * ell) / N_step. DeepSpeed
    divides each micro-batch loss by the accumulation steps and averages gradients over ranks, so
    a micro-batch divides by N_step / (accum * world). Dividing by the micro-batch's own turns
    instead would weigh turns of short, length-bucketed batches more than turns of long ones."""
    n = torch.tensor([float(known_turns(step_examples))], dtype=torch.float64)
    if world > 1:
        torch.distributed.all_reduce(n)
    return max(float(n), 1.0) / (accum * world)


def flat_params(prefix, d):
    """A nested config section as dotted MLflow params."""
    out = {}
    for key, v in d.items():
        if isinstance(v, dict):
            out.update(flat_params(f"{prefix}.{key}", v))
        else:
            out[f"{prefix}.{key}"] = v
    return out


