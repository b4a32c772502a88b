"""Peak memory and step time of one training step of the PPG loss, side by side:

    full       today's path before this change: the model's [B, L, V] logits, then token_logprobs
    targets    ppg.losses.target_logprobs: the head only where a target is predicted, in
               checkpointed chunks (what ppg train uses)
    targets+gc the same with train.gradient_checkpointing (activations recomputed in backward)

and, to break today's peak down, two partial steps in their own processes:

    body       the transformer body only, backward from its final hidden states at the target
               positions: the activations kept for the backward pass
    logits     the body and the full head, backward from the target tokens' raw logits: adds the
               [B, L, V] logits (and their gradient), no log-softmax

so activations = body, logits = logits - body, log-softmax buffers = full - logits.

    python benchmarks/loss_memory.py [--batch 4] [--length 2048] [--model smollm2-135m] [--lora-r 8]

Each configuration runs in its own process (one forward + backward of the offline loss on random
tokens, half of them targets); peak = the process's maximum resident memory minus its memory
with the model loaded, so weights and the allocator's start are not counted. The logits' share
is computed from the shapes (a process's high-water mark includes loading's transient, so a
step's own peak shows only when it is higher): [B, L-1, V] fp32 is what `full` materializes at least twice (the
logits and cross-entropy's log-softmax), and what `targets` never builds.
"""

import argparse
import json
import subprocess
import sys
import time


def rss_kib() -> int:
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS in /proc/self/status")


def one(cfg: str, batch: int, length: int, model_spec: str, lora_r: int) -> dict:
    import resource

    import torch

    from ppg.losses import lm_body_and_head, offline_ppg_loss, target_logprobs, token_logprobs
    from ppg.models import load_model, resolve_model
    from ppg.config import LoraConfig

    torch.manual_seed(0)
    model = load_model(resolve_model(model_spec), LoraConfig(enabled=lora_r > 0, r=lora_r, alpha=2 * lora_r))
    model.train()
    if cfg == "targets+gc":
        model.config.use_cache = False
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    ids = torch.randint(5, model.config.vocab_size, (batch, length))
    attn = torch.ones_like(ids)
    turn_index = torch.full((batch, length), -1)
    for t in range(8):  # 8 turns, each the second half of its window: half the tokens are targets
        a = t * length // 8
        turn_index[:, a + length // 16:a + length // 8] = t
    weights = torch.ones(batch, 8)
    base = rss_kib()  # the loaded model, now (a transient peak of loading is not a baseline)
    t0 = time.perf_counter()
    tgt = turn_index[:, 1:] >= 0
    if cfg == "body":
        h = lm_body_and_head(model)[0](input_ids=ids, attention_mask=attn).last_hidden_state
        loss = h[:, :-1][tgt].float().sum()
    elif cfg == "logits":
        logits = model(input_ids=ids, attention_mask=attn).logits
        loss = logits[:, :-1].gather(-1, ids[:, 1:, None])[..., 0][tgt].float().sum()
    else:
        lp = (token_logprobs(model(input_ids=ids, attention_mask=attn).logits, ids) if cfg == "full"
              else target_logprobs(model, ids, attn, turn_index))
        loss = offline_ppg_loss(lp, turn_index, weights).loss
    loss.backward()
    step = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"config": cfg, "loss": float(loss), "step_s": step, "peak_mib": (peak - base) / 1024,
            "vocab": model.config.vocab_size}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--length", type=int, default=2048)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--lora-r", type=int, default=8)
    ap.add_argument("--one", default=None, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.one:
        print(json.dumps(one(a.one, a.batch, a.length, a.model, a.lora_r)))
        return
    rows = []
    for cfg in ("full", "targets", "targets+gc", "body", "logits"):
        out = subprocess.run([sys.executable, __file__, "--one", cfg, "--batch", str(a.batch), "--length",
                              str(a.length), "--model", a.model, "--lora-r", str(a.lora_r)],
                             capture_output=True, text=True, check=True)
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
        print(json.dumps(rows[-1]), flush=True)
    logits_mib = a.batch * (a.length - 1) * rows[0]["vocab"] * 4 / 2 ** 20
    print(f"\nB={a.batch} L={a.length} {a.model} (LoRA r {a.lora_r}); one [B, L-1, V] fp32 tensor = "
          f"{logits_mib:.0f} MiB")
    print("| path | peak over the loaded model (MiB) | vs full | step (s) | vs full | loss |")
    print("|---|---|---|---|---|---|")
    for r in rows[:3]:
        print(f"| {r['config']} | {r['peak_mib']:.0f} | {r['peak_mib'] / rows[0]['peak_mib']:.2f} | "
              f"{r['step_s']:.1f} | {r['step_s'] / rows[0]['step_s']:.2f} | {r['loss']:.6f} |")
    full, body, logits = rows[0]["peak_mib"], rows[3]["peak_mib"], rows[4]["peak_mib"]
    print(f"\nToday's peak ({full:.0f} MiB), broken down: activations {body:.0f} MiB ({body / full:.0%}), "
          f"logits and their gradient {logits - body:.0f} MiB ({(logits - body) / full:.0%}), "
          f"log-softmax buffers {full - logits:.0f} MiB ({(full - logits) / full:.0%})")


if __name__ == "__main__":
    main()
