"""The DeepSpeed engine every trainer shares: rendezvous for a launcher-less process, the config
filled from params.yaml's train.deepspeed, seeding and the generators' state for checkpoints,
resume, the gradient norm, and the final output (adapters or weights + tokenizer + run.json).
ppg.train.run.TrainingRun puts these together around a trainer's loop.

One process without a launcher sets its own rendezvous variables; `deepspeed --num_gpus N
$(which ppg) train ...` runs N ranks (CPU ranks here, GPUs elsewhere).
"""

import json
import os
import random
import sys
from pathlib import Path

import numpy as np
import torch

from ppg.io import free_port
from ppg.lineage.record import code_hash  # noqa: F401  (a run's identity hashes the code)
from ppg.train import checkpoint


def setup_distributed(one_rank: str | None = None):
    """Rendezvous for a launcher-less single process; CPU accelerator when there is no GPU.
    one_rank: why this trainer runs on one rank only (refused with it when started on several)."""
    if "DS_ACCELERATOR" not in os.environ and not torch.cuda.is_available():
        os.environ["DS_ACCELERATOR"] = "cpu"
    if "RANK" not in os.environ:
        os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1",
                          MASTER_PORT=os.environ.get("MASTER_PORT") or str(free_port()))
    import deepspeed
    import deepspeed.comm.torch  # noqa: F401

    if os.environ.get("DS_ACCELERATOR") == "cpu" and os.environ.get("PPG_DS_SHM") != "1":
        # DeepSpeed JIT-compiles a shared-memory allreduce op (~60 s) on its first CPU start;
        # gloo does the job without it. PPG_DS_SHM=1 keeps it for long multi-rank CPU runs.
        sys.modules["deepspeed.comm.torch"].build_shm_op = lambda: None
    if not torch.distributed.is_initialized():
        deepspeed.init_distributed()
    world = torch.distributed.get_world_size()
    if one_rank and world > 1:
        raise ValueError(f"{one_rank}; got {world} ranks: start it without a launcher (train.launcher applies to "
                         f"offline training)")
    return deepspeed, torch.distributed.get_rank(), world


def seed_all(seed):
    """Seed Python, NumPy and torch (offline and online training start the same way)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state():
    """Every generator's state, saved in a checkpoint so a resumed run draws what it would have."""
    return {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}


def set_rng_state(s):
    """Restore what rng_state saved."""
    random.setstate(s["python"])
    np.random.set_state(s["numpy"])
    torch.set_rng_state(s["torch"])


def ds_config(deepspeed_cfg: dict, micro_batch: int, world: int, total_steps: int) -> dict:
    """params.yaml's DeepSpeed section with batch sizes and an "auto" total_num_steps filled in."""
    if int(deepspeed_cfg.get("zero_optimization", {}).get("stage", 0)) > 2:
        raise ValueError("train.deepspeed.zero_optimization.stage: ZeRO-3 is not supported yet (the final "
                         "export would need the partitioned weights gathered); use 0, 1 or 2")
    out = dict(deepspeed_cfg, train_micro_batch_size_per_gpu=micro_batch)
    out["train_batch_size"] = micro_batch * int(out.get("gradient_accumulation_steps", 1)) * world
    sched = out.get("scheduler", {})
    if sched.get("params", {}).get("total_num_steps") == "auto":
        out["scheduler"] = {**sched, "params": {**sched["params"], "total_num_steps": total_steps}}
    return out


def start(deepspeed, model, config: dict, gradient_checkpointing: bool = False):
    """A DeepSpeed engine over the model's trainable parameters (all, or the LoRA adapters).
    gradient_checkpointing: the layers keep only their inputs for the backward pass and recompute
    the rest (about one more forward pass of compute for a fraction of the activation memory)."""
    if gradient_checkpointing:
        model.config.use_cache = False  # a cache is of no use in training and clashes with recomputation
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    engine, _, _, _ = deepspeed.initialize(model=model, config=config,
                                           model_parameters=[q for q in model.parameters() if q.requires_grad])
    return engine


def resume(engine, workdir: Path, point, state: dict) -> dict:
    """The trainer's state at the checkpoint `point` (checkpoint.find_resume's answer; None = a
    fresh start, state as given), with every generator put back where it was."""
    if not point:
        return state
    _, client_state = engine.load_checkpoint(str(workdir), tag=point[0])
    set_rng_state(client_state["rng"])
    return client_state["ppg"]


def save(engine, workdir: Path, state: dict, fp: str, ident: dict, keep: int, rank0: bool = True) -> str:
    """A checkpoint at state["step"] holding the trainer's state and every generator's."""
    return checkpoint.save(engine, workdir, state["step"], {"ppg": state, "rng": rng_state()}, fp, ident, keep,
                           rank0)


def progress_bar(enabled: bool, total: int, initial: int, desc: str):
    """A tqdm bar on stderr, or None."""
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, desc=desc, unit="step", file=sys.stderr)


def grad_norm(engine):
    """Pre-clipping global gradient norm: ZeRO optimizers report it; at ZeRO-0 it is computed
    from the (replicated, already averaged) gradients before the step clears them."""
    if engine.zero_optimization_stage() > 0:
        n = engine.get_global_grad_norm()
        return float(n) if n is not None else None
    grads = [q.grad.detach().float().norm() ** 2 for q in engine.module.parameters() if q.grad is not None]
    return float(torch.stack(grads).sum().sqrt()) if grads else 0.0


def write_output(engine, tok, out: Path, result: dict | None, merge: bool = False, also=None):
    """Adapters (LoRA) or full weights + tokenizer + run.json (the result; None: no run.json),
    swapped in atomically. merge: fold the adapters into the weights they were trained on and save
    those (when that starting point is not the base model the adapters' config names, adapters
    alone would reload to another model); the engine's module is spent afterwards. also(folder)
    writes a trainer's own files into the output before it is swapped in."""
    from ppg.models import atomic_folder

    def build(tmp):
        (engine.module.merge_and_unload() if merge else engine.module).save_pretrained(tmp)
        tok.save_pretrained(tmp)
        if result is not None:
            (Path(tmp) / "run.json").write_text(json.dumps(result, indent=1, default=str))
        if also:
            also(Path(tmp))

    atomic_folder(out, build)
