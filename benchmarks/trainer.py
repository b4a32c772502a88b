"""Benchmark the training step: tokens/s of the DeepSpeed PPG step vs a bare PyTorch loop that
computes the same loss, and TRL's SFTTrainer (plain SFT: what a user would otherwise get), on
the same batches, side by side in one run.

    python benchmarks/trainer.py [--steps 5] [--warmup 2] [--batch 2] [--length 256] [--only tiny]

Each configuration runs in its own process (so peak RSS is its own). Targets for SmolLM2-135M:
DeepSpeed ZeRO-0 >= 0.90x the bare loop, >= 1.0x TRL. Needs `pip install trl==1.16.0` for the
TRL rows (`make bench` installs it); they are skipped without it.
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

CONFIGS = [  # (model, lora, mode)
    ("tiny", False, "bare"), ("tiny", False, "ds0"), ("tiny", False, "ds2"),
    ("smollm2-135m", True, "bare"), ("smollm2-135m", True, "ds0"), ("smollm2-135m", True, "ds2"),
    ("smollm2-135m", True, "trl"),
    ("smollm2-135m", False, "bare"), ("smollm2-135m", False, "ds0"), ("smollm2-135m", False, "ds2"),
    ("smollm2-135m", False, "trl"),
]
LR = 1e-4


def make_batches(spec, n_batches, batch, length, seed=0):
    """Fixed batches of equal-length sequences (no padding: tokens/step is the same everywhere)."""
    sys.path.insert(0, str(Path(__file__).parent))
    from build import generated

    from ppg.data.build import build_rows
    from ppg.models import load_tokenizer, resolve_model

    tok = load_tokenizer(resolve_model(spec))
    rows, _ = build_rows(generated(n_batches * batch * 2, 16, seed), tok, ["k3"], {"length": 3}, 4096,
                         {"train": 1.0}, 1, seed)
    rows = [r for r in rows if len(r["input_ids"]) >= length][:n_batches * batch]
    assert len(rows) == n_batches * batch, "not enough long sequences"
    out = []
    for i in range(0, len(rows), batch):
        chunk = rows[i:i + batch]
        n_turns = max(r["n_turns"] for r in chunk)
        w = torch.zeros(len(chunk), n_turns)
        for j, r in enumerate(chunk):
            w[j, :r["n_turns"]] = torch.nan_to_num(torch.as_tensor(r["w_k3"]) - 1.5)  # centred weights
        out.append({"input_ids": torch.from_numpy(np.stack([r["input_ids"][:length] for r in chunk])).long(),
                    "turn_index": torch.from_numpy(np.stack([r["turn_index"][:length] for r in chunk])).long(),
                    "weights": w})
    return out


def worker(spec, lora, mode, batches, warmup, bf16=False):
    from ppg.config import LoraConfig
    from ppg.losses import offline_ppg_loss, token_logprobs
    from ppg.models import load_model, resolve_model

    torch.manual_seed(0)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = load_model(resolve_model(spec), LoraConfig(enabled=lora))
    n_params = sum(p.numel() for p in model.parameters())
    params = [p for p in model.parameters() if p.requires_grad]
    batches = [{k: v.to(device) for k, v in b.items()} for b in batches]
    times = []
    if mode == "trl":
        return trl_worker(model, batches, warmup, bf16)
    if mode == "bare":
        model.to(device)
        opt = torch.optim.AdamW(params, lr=LR, weight_decay=0.0)
        autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16)
        step_model, backward = (lambda **kw: _autocast_call(model, autocast, **kw)), (lambda loss: loss.backward())

        def step():
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)
    else:
        from ppg.train.engine import setup_distributed

        deepspeed, _, _ = setup_distributed()
        cfg = {"train_micro_batch_size_per_gpu": batches[0]["input_ids"].shape[0], "gradient_accumulation_steps": 1,
               "gradient_clipping": 1.0, "zero_optimization": {"stage": int(mode[2])}, "bf16": {"enabled": bf16},
               "optimizer": {"type": "AdamW", "params": {"lr": LR, "weight_decay": 0.0, "torch_adam": True}},
               "steps_per_print": 10**9}
        engine, *_ = deepspeed.initialize(model=model, model_parameters=params, config=cfg)
        step_model, backward, step = engine, engine.backward, engine.step
    losses = []
    for i, b in enumerate(batches):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        logits = step_model(input_ids=b["input_ids"]).logits
        out = offline_ppg_loss(token_logprobs(logits, b["input_ids"]), b["turn_index"], b["weights"])
        backward(out.loss)
        step()
        losses.append(out.loss.item())  # .item() waits for the GPU too
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    tokens = sum(b["input_ids"].numel() for b in batches[warmup:])
    out = {"tokens_per_s": tokens / sum(times), "losses": losses}
    if device.type == "cuda":  # model FLOPs utilization: ~6 N FLOPs per token, dense bf16 peak
        peak = float(os.environ.get("PPG_PEAK_TFLOPS", "989")) * 1e12  # H100 SXM bf16 dense
        out["mfu"] = 6 * n_params * out["tokens_per_s"] / peak
        out["peak_gpu_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return out


def _autocast_call(model, autocast, **kw):
    with autocast:
        return model(**kw)


def trl_worker(model, batches, warmup, bf16):
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import SFTConfig, SFTTrainer

    rows = [{"input_ids": ids.tolist(), "completion_mask": (ti >= 0).long().tolist()}
            for b in batches for ids, ti in zip(b["input_ids"], b["turn_index"])]
    stamps = []

    class Clock(TrainerCallback):
        def on_step_begin(self, *a, **k):
            stamps.append(time.perf_counter())

        def on_step_end(self, *a, **k):
            stamps.append(time.perf_counter())

    bs = batches[0]["input_ids"].shape[0]
    args = SFTConfig(output_dir=tempfile.mkdtemp(), per_device_train_batch_size=bs, max_steps=len(batches),
                     learning_rate=LR, weight_decay=0.0, max_grad_norm=1.0, lr_scheduler_type="constant",
                     logging_steps=10**6, save_strategy="no", report_to=[], use_cpu=not torch.cuda.is_available(),
                     bf16=bf16, dataloader_num_workers=0, max_length=None, completion_only_loss=True, seed=0)
    trainer = SFTTrainer(model=model, args=args, train_dataset=Dataset.from_list(rows), callbacks=[Clock()])
    trainer.train()
    step_times = [stamps[2 * i + 1] - stamps[2 * i] for i in range(warmup, len(stamps) // 2)]
    tokens = sum(b["input_ids"].numel() for b in batches[warmup:])
    return {"tokens_per_s": tokens / sum(step_times)}


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=5, help="timed steps per configuration")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--length", type=int, default=256)
    p.add_argument("--only", default=None, help="run only configurations of this model spec")
    p.add_argument("--bf16", action="store_true", help="bf16 (GPU preset; emulated and slow on CPUs)")
    p.add_argument("--zero2-only", action="store_true", help="DeepSpeed rows at ZeRO-2 only (the GPU preset)")
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    p.add_argument("--batches", default=None, help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.worker:
        spec, lora, mode = a.worker.split(",")
        res = worker(spec, lora == "lora", mode, torch.load(a.batches), a.warmup, a.bf16)
        res["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print("RESULT " + json.dumps(res))
        return
    try:
        import trl  # noqa: F401
        have_trl = True
    except ImportError:
        have_trl = False
    tmp = Path(tempfile.mkdtemp())
    results, batch_files = {}, {}
    print(f"batch {a.batch} x {a.length} tokens, {a.warmup} warm-up + {a.steps} timed steps, fp32, "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"{'model':14s} {'weights':8s} {'mode':6s} {'tokens/s':>10s} {'peak RSS MB':>12s}")
    for spec, lora, mode in CONFIGS:
        if (a.only and spec != a.only) or (mode == "trl" and not have_trl) or (a.zero2_only and mode == "ds0"):
            continue
        if spec not in batch_files:
            batch_files[spec] = tmp / f"{spec}.pt"
            torch.save(make_batches(spec, a.warmup + a.steps, a.batch, a.length), batch_files[spec])
        env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_PORT")}
        out = subprocess.run([sys.executable, __file__, "--worker", f"{spec},{'lora' if lora else 'full'},{mode}",
                              "--batches", str(batch_files[spec]), "--warmup", str(a.warmup)]
                             + (["--bf16"] if a.bf16 else []),
                             capture_output=True, text=True, env=env)
        line = next((x for x in out.stdout.splitlines() if x.startswith("RESULT ")), None)
        if line is None:
            print(f"{spec:14s} {'lora' if lora else 'full':8s} {mode:6s} FAILED\n{out.stderr[-2000:]}")
            continue
        r = json.loads(line[7:])
        results[(spec, lora, mode)] = r
        gpu = f"  MFU {r['mfu']:.1%}, peak GPU {r['peak_gpu_mb']:.0f} MB" if "mfu" in r else ""
        print(f"{spec:14s} {'lora' if lora else 'full':8s} {mode:6s} {r['tokens_per_s']:10.1f} "
              f"{r['peak_rss_mb']:12.0f}{gpu}")
    print("\nratios (same model, same weights setting):")
    for (spec, lora, mode), r in results.items():
        bare = results.get((spec, lora, "bare"))
        trl_r = results.get((spec, lora, "trl"))
        if mode.startswith("ds") and bare:
            extra = f", {r['tokens_per_s'] / trl_r['tokens_per_s']:.2f}x TRL" if trl_r else ""
            same = "same losses" if bare.get("losses") and all(
                abs(x - y) <= 1e-3 * max(1, abs(x)) for x, y in zip(r["losses"], bare["losses"])) else "LOSSES DIFFER"
            print(f"  {spec} {'lora' if lora else 'full'} {mode}: {r['tokens_per_s'] / bare['tokens_per_s']:.2f}x "
                  f"bare loop{extra} ({same})")


if __name__ == "__main__":
    main()
