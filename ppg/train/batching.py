"""Training examples from a built dataset: the chosen policy's weights, shaped once over the
whole split, and length-bucketed batches that keep padding small."""

import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ppg.data.schema import DataError
from ppg.data.turns import turn_kind_codes
from ppg.returns import parse_policy_id, shape_weights


@dataclass
class Example:
    input_ids: np.ndarray
    turn_index: np.ndarray
    weights: np.ndarray  # shaped weight per turn of the whole dialogue (NaN = unknown)


def load_examples(data_dir, split, policy_id, baseline="none", standardize=False, fold=None,
                  subsample=0, seed=0, clip=None) -> tuple[list[Example], dict]:
    """Rows of data_dir/split.parquet with shaped weights of policy_id. fold=F keeps every fold
    but F (k-fold training). Weights are shaped over unique (dialogue, speaker) sequences, so a
    dialogue cut into windows counts once in baseline statistics."""
    import pyarrow.parquet as pq

    parse_policy_id(policy_id)
    path = Path(data_dir) / f"{split}.parquet"
    if not path.exists():
        raise DataError(f"{path}: no such split (run `ppg build`)")
    table = pq.read_table(path)
    col = f"w_{policy_id}"
    if col not in table.column_names:
        have = [c[2:] for c in table.column_names if c.startswith("w_")]
        raise DataError(f"{path}: field {col}: the dataset has no weights for policy {policy_id!r} "
                        f"(built for {have}; add it to returns.policies and rebuild)")
    rows = table.to_pylist()
    if fold is not None:
        rows = [r for r in rows if r["fold"] != fold]
    if subsample and subsample < len(rows):
        rows = random.Random(seed).sample(rows, subsample)
    if not rows:
        raise DataError(f"{path}: no sequences to train on (split={split}, fold={fold})")
    keys = list(dict.fromkeys((r["dialogue_id"], r["speaker"]) for r in rows))
    first = {}
    for r in rows:
        first.setdefault((r["dialogue_id"], r["speaker"]), r)
    T = max(r["n_turns"] for r in first.values())
    w = torch.zeros(len(keys), T, dtype=torch.float64)
    mask = torch.zeros(len(keys), T, dtype=torch.bool)
    groups = torch.tensor([first[k]["persona_group"] for k in keys])
    if baseline == "turn_kind" and "turn_kind" not in table.column_names:
        raise DataError(f"{path}: field turn_kind: built before turn kinds were stored; rebuild (`ppg build`) "
                        f"for returns.baseline turn_kind")
    kinds = turn_kind_codes([first[k].get("turn_kind") or [] for k in keys], T)
    for i, k in enumerate(keys):
        n = first[k]["n_turns"]
        w[i, :n] = torch.tensor(first[k][col], dtype=torch.float64)
        mask[i, :n] = True
    shaped = shape_weights(w, mask, baseline, standardize, groups, clip=clip, kinds=kinds)
    row_of = {k: i for i, k in enumerate(keys)}
    examples = [Example(np.asarray(r["input_ids"], dtype=np.int64), np.asarray(r["turn_index"], dtype=np.int64),
                        shaped[row_of[(r["dialogue_id"], r["speaker"])], :r["n_turns"]].numpy()) for r in rows]
    known = shaped[mask & ~torch.isnan(shaped)]
    per_turn = [float(torch.nanmean(torch.where(mask[:, t], shaped[:, t], float("nan")))) for t in range(T)]
    stats = {"sequences": len(keys), "windows": len(rows), "turns": int(mask.sum()),
             "nan_weight_turns": int((mask & torch.isnan(shaped)).sum()),
             "weight_mean": float(known.mean()) if known.numel() else float("nan"),
             "weight_std": float(known.std(unbiased=False)) if known.numel() else float("nan"),
             "weight_mean_by_turn": per_turn}
    return examples, stats


def length_batches(lengths: list[int], batch_size: int, bucket_batches: int, seed: int, epoch: int):
    """Batches of indices: seeded shuffle, pools of bucket_batches*batch_size sorted by length and
    cut into batches, then the batch order shuffled. Same seed and epoch -> same batches."""
    rng = random.Random(f"{seed}:{epoch}")
    order = list(range(len(lengths)))
    rng.shuffle(order)
    pool = batch_size * bucket_batches
    batches = []
    for i in range(0, len(order), pool):
        chunk = sorted(order[i:i + pool], key=lambda j: lengths[j])
        batches += [chunk[k:k + batch_size] for k in range(0, len(chunk), batch_size)]
    rng.shuffle(batches)
    return batches


def known_turns(examples: list[Example]) -> int:
    """Turns that enter the policy-gradient sum: a target token in the window and a known weight
    (what offline_ppg_loss counts), without a forward pass."""
    n = 0
    for e in examples:
        t = np.unique(e.turn_index[e.turn_index >= 0])
        n += int((~np.isnan(e.weights[t])).sum())
    return n


def collate(examples: list[Example], pad_id: int) -> dict:
    """Right-padded tensors; turn_index -1 and weight 0 at padding (never referenced)."""
    L = max(len(e.input_ids) for e in examples)
    T = max(len(e.weights) for e in examples)
    ids = torch.full((len(examples), L), pad_id, dtype=torch.long)
    attn = torch.zeros((len(examples), L), dtype=torch.long)
    turn = torch.full((len(examples), L), -1, dtype=torch.long)
    w = torch.zeros((len(examples), T), dtype=torch.float32)
    for i, e in enumerate(examples):
        n = len(e.input_ids)
        ids[i, :n] = torch.from_numpy(e.input_ids)
        attn[i, :n] = 1
        turn[i, :n] = torch.from_numpy(e.turn_index)
        w[i, :len(e.weights)] = torch.from_numpy(e.weights.astype(np.float32))
    return {"input_ids": ids, "attention_mask": attn, "turn_index": turn, "weights": w,
            "tokens": int(attn.sum()), "padded": ids.numel()}
