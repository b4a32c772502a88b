"""Rollouts: transformers' generate over the re-encoded dialogue every turn (backend "generate")
against the KV cache kept across turns (backend "cache", the default), side by side on the same
personas, partner lines and seeds, at several dialogue lengths.

    python benchmarks/rollout.py [--model smollm2-135m] [--turns 6 8 12 24] [--dialogues 8]

Personas: the real therapy persona pool in ../shared/data/consistent-llms when present (backstories
of ~400 tokens), else the shipped example personas (~40 tokens). The partner says the shipped
example therapist's lines in turn. Sampling as ppg evaluate's default (24 new tokens, T=0.7,
top_p=0.9, batch 8). Then both backends play greedily (T=0) at the first length and the replies
are compared token for token (a difference is a near-tie of two logits, reported with its margin).
"""

import argparse
import json
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
POOL = ROOT.parent / "shared/data/consistent-llms/personas/therapy__config_therapy_personas.json"


class Script:
    """The partner: its i-th line is the i-th example therapist line (cycled), for `turns` turns."""

    def __init__(self, lines: list[str], turns: int):
        self.lines, self.turns = lines, turns

    def reply(self, episodes):
        return [self.lines[len(e.partner_lines()) % len(self.lines)] if len(e.partner_lines()) < self.turns else None
                for e in episodes]


class NoJudge:
    def identity(self):
        return {"kind": "none"}

    def judge(self, dialogues):
        return dialogues


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--turns", type=int, nargs="+", default=[6, 8, 12, 24])
    ap.add_argument("--dialogues", type=int, default=8)
    a = ap.parse_args()
    from transformers import AutoModelForCausalLM

    from ppg.data.personas import import_personas
    from ppg.models import load_tokenizer, resolve_model
    from ppg.rollout import Episode, GenerationConfig, play

    folder = resolve_model(a.model)
    tok = load_tokenizer(folder)
    model = AutoModelForCausalLM.from_pretrained(folder).eval()
    logged = [json.loads(x) for x in (ROOT / "data/examples/therapy.jsonl").read_text().splitlines()]
    lines = list(dict.fromkeys(ln["text"] for d in logged for ln in d["lines"] if ln["speaker"] == "therapist"))
    if POOL.exists():
        pool, _ = import_personas(POOL)
        personas, source = [p["persona"] for p in pool][:a.dialogues], "consistent-llms therapy pool"
    else:
        personas = list(dict.fromkeys(d["personas"]["patient"] for d in logged))[:a.dialogues]
        source = "shipped example personas"
    persona_tokens = sum(len(tok(p)["input_ids"]) for p in personas) / len(personas)
    eps = [Episode(f"b{i}", i, "patient", p, "therapist", "therapy") for i, p in enumerate(personas)]
    print(f"{a.model}, {len(eps)} dialogues ({source}, {persona_tokens:.0f} persona tokens on average), "
          f"{torch.get_num_threads()} threads")
    print("| turns | path | wall (s) | prefilled tokens / dialogue | new tokens/s | wall ratio |")
    print("|---|---|---|---|---|---|")
    for turns in a.turns:
        walls = {}
        for backend in ("generate", "cache"):
            gen = GenerationConfig(max_new_tokens=24, temperature=0.7, top_p=0.9, batch_size=8, backend=backend)
            stats = {}
            t0 = time.perf_counter()
            _, rolls = play(model, tok, eps, Script(lines, turns), NoJudge(), gen, 0, with_tokens=True, stats=stats)
            walls[backend] = time.perf_counter() - t0
            new = sum(sum(1 for x in r.turn_index if x >= 0) for r in rolls)
            ratio = f"{walls['generate'] / walls[backend]:.2f}x"
            print(f"| {turns} | {backend} | {walls[backend]:.1f} | {stats['prefilled'] / len(eps):.0f} | "
                  f"{new / walls[backend]:.1f} | {ratio} |", flush=True)

    turns = a.turns[0]
    greedy = {}
    for backend in ("generate", "cache"):
        gen = GenerationConfig(max_new_tokens=24, temperature=0.0, batch_size=8, backend=backend)
        greedy[backend] = play(model, tok, eps, Script(lines, turns), NoJudge(), gen, 0, with_tokens=True)[1]
    same, diverged, margins = 0, 0, []
    for r0, r1 in zip(greedy["generate"], greedy["cache"]):
        for t in range(turns):  # a dialogue's turns until its two versions first differ (later contexts differ)
            if [x for x, i in zip(r0.input_ids, r0.turn_index) if i == t] == \
                    [x for x, i in zip(r1.input_ids, r1.turn_index) if i == t]:
                same += 1
                continue
            j = next(j for j, (u, v) in enumerate(zip(r0.input_ids, r1.input_ids)) if u != v)
            with torch.no_grad():  # how close the two top tokens were there, under a plain forward pass
                top = model(torch.tensor([r0.input_ids[:j]])).logits[0, -1].topk(2).values
            diverged += 1
            margins.append(float(top[0] - top[1]))
            break
    print(f"\ngreedy, {turns} turns: {same} replies identical, {diverged} of {len(eps)} dialogues differ at some "
          f"turn" + (f" (top-2 logit margins there: {', '.join(f'{m:.1e}' for m in margins)})" if margins else ""))

if __name__ == "__main__":
    main()
