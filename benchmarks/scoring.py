"""Scoring logged turns (offline evaluation, the gate, the real-data study): one window per
forward pass over the full logits, twice (policy, then reference), against ppg.evaluate.offline
.offline_turns (windows of similar length batched, the head only at target tokens, the reference
as the same model with its LoRA adapters off), side by side on the same rows.

    python benchmarks/scoring.py [--model smollm2-135m] [--rows 48] [--batch 8]

Rows: windows built by `ppg build` from the shipped example therapy sessions. The adapters get
small random B matrices so that policy and reference differ (scores are not all 0).
"""

import argparse
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--rows", type=int, default=48)
    ap.add_argument("--batch", type=int, default=8)
    a = ap.parse_args()
    import pyarrow.parquet as pq

    from ppg.config import BuildConfig, LoraConfig
    from ppg.data.build import build_dataset
    from ppg.evaluate.offline import offline_turns
    from ppg.models import load_model, load_tokenizer, resolve_model
    from ppg.reference import naive_turn_scores

    folder = resolve_model(a.model)
    tmp = Path(tempfile.mkdtemp(prefix="ppg-scoring-"))
    build_dataset(ROOT / "data/examples/therapy.jsonl", tmp, folder, a.model, ["k3"], {"length": 3},
                  BuildConfig(max_length=1024, splits={"train": 1.0}, folds=2))
    rows = pq.read_table(tmp / "train.parquet").to_pylist()[:a.rows]
    torch.manual_seed(0)
    model = load_model(folder, LoraConfig(enabled=True, r=8, alpha=16)).eval()
    for name, q in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(q, std=0.01)
    tok = load_tokenizer(folder)
    turns = sum(r["n_turns"] for r in rows)
    tokens = sum(len(r["input_ids"]) for r in rows)
    t0 = time.perf_counter()
    slow = naive_turn_scores(model, rows, "k3")
    t_naive = time.perf_counter() - t0
    t0 = time.perf_counter()
    fast = [t["score"] for t in offline_turns(model, None, True, tok, rows, "k3", batch_size=a.batch)]
    t_batched = time.perf_counter() - t0
    diff = max(abs(x - y) for x, y in zip(slow, fast))
    print(f"{a.model}, {len(rows)} windows ({tokens} tokens, {turns} turns), {torch.get_num_threads()} threads")
    print("| path | wall (s) | turns/s | speed-up |")
    print("|---|---|---|---|")
    print(f"| one window per forward pass, full logits | {t_naive:.1f} | {len(slow) / t_naive:.2f} | 1.00 |")
    print(f"| batches of {a.batch} by length, head at targets | {t_batched:.1f} | {len(fast) / t_batched:.2f} | "
          f"{t_naive / t_batched:.2f} |")
    print(f"same scores: {len(slow) == len(fast)} turns each, largest difference {diff:.2e} (limit 1e-4)")


if __name__ == "__main__":
    main()
