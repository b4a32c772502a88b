"""Where one online evaluation's time goes (eval's defaults on the simulator: 8 personas, Q&A,
SmolLM2 with fresh LoRA adapters folded in, eval.dtype auto), and the changes that cut it, side
by side in one run:

- prefill: the logits of a prefill's last position as `logits_to_keep=1` (before) or as an index
  (ppg.generation.last_position: no copy of the output embedding per prefill);
- Q&A: the questions of 2 dialogues per batch (eval.generation.batch_size 8, before) or of all 8
  (batch_size 32);
- decoding: transformers' DynamicCache (torch.cat of every layer's cache per decoded id) and top-p
  over the whole vocabulary (warp's sort, then torch.multinomial over 49,152 ids), or the growing
  cache (ppg.kv_cache) and top-p among the 1,024 most likely ids (ppg.generation.nucleus).

Each path runs `--rounds` interleaved rounds. The dialogues are compared whole with the previous
path's: the first two changes keep them byte for byte; the third draws other ids from the same
distribution, so its dialogues differ and its metrics are compared instead. The Q&A answers are
compared question by question with the first path's (bfloat16 numerics depend on the padding of
the batch a question shares, so a near-tie can flip).

    python benchmarks/eval_breakdown.py [--rounds 2]

The stage's own process (imports, loading, writing, MLflow) is timed by benchmarks/warm_start.py.
"""

import argparse
import copy
import time
from dataclasses import replace


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=2)
    a = ap.parse_args()
    t0 = time.perf_counter()
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    import ppg.evaluate.online as online
    import ppg.evaluate.run as run
    import ppg.generation as generation
    import ppg.kv_cache as kv_cache
    from ppg.config import Params
    from ppg.models import load_tokenizer, resolve_model

    imports = time.perf_counter() - t0
    folder = resolve_model("smollm2-135m")
    t0 = time.perf_counter()
    tok = load_tokenizer(folder)
    base = AutoModelForCausalLM.from_pretrained(folder).eval()
    lora = get_peft_model(base, LoraConfig(r=8, target_modules=["q_proj", "v_proj"])).eval().requires_grad_(False)
    load = time.perf_counter() - t0
    p = Params()
    index, growing, sample = generation.last_position, kv_cache.growing_cache, generation.sample_next

    def dynamic(config):
        from transformers import DynamicCache

        return DynamicCache(config=config)

    def whole_vocabulary(logits, gen):  # sample_next before the nucleus among candidates
        if gen.temperature <= 0:
            return logits.argmax(-1)
        return torch.multinomial(generation.warp(logits, gen).softmax(-1), 1)[:, 0]
    forward, qa_of, answer = type(base).forward, online.backstory_qa, online.answers_after
    spent = {}

    def timed_forward(self, *args, **kwargs):  # a pass over more than one new id per row is a prefill
        t = time.perf_counter()
        out = forward(self, *args, **kwargs)
        key = "prefill" if kwargs["input_ids"].shape[1] > 1 else "decode"
        spent[key] = spent.get(key, 0.0) + time.perf_counter() - t
        return out

    answers = []

    def timed_qa(model, tok_, dialogues, gen):
        t = time.perf_counter()
        out = qa_of(model, tok_, dialogues, gen)
        spent["qa"] = spent.get("qa", 0.0) + time.perf_counter() - t
        return out

    def kept_answers(*args):
        answers.append(answer(*args))
        return answers[-1]

    type(base).forward, run.backstory_qa, online.answers_after = timed_forward, timed_qa, kept_answers
    paths = {"before: logits_to_keep=1, Q&A batch 8": (False, 8, False),
             "index of the last position, Q&A batch 8": (True, 8, False),
             "index, Q&A batch 32": (True, 32, False),
             "+ growing cache, top-p among 1,024 ids (now)": (True, 32, True)}
    times, parts, played, qa, reward = {k: [] for k in paths}, {}, {}, {}, {}
    for _ in range(a.rounds):
        for name, (fixed, batch, decoding) in paths.items():
            generation.last_position = index if fixed else (lambda width, device: 1)
            kv_cache.growing_cache, generation.sample_next = ((growing, sample) if decoding
                                                               else (dynamic, whole_vocabulary))
            q = replace(p, eval=replace(p.eval, generation={**p.eval.generation, "batch_size": batch}))
            spent.clear()
            answers.clear()
            t = time.perf_counter()
            m, dialogues, _ = run.measure(q, copy.deepcopy(lora), tok, "validation", "greedy", lora=True)
            times[name].append(time.perf_counter() - t)
            parts[name] = dict(spent)
            played[name] = [d.model_dump_json() for d in dialogues]
            qa[name] = (answers[0], m["online"]["qa"]["mean"])
            reward[name] = m["online"]["reward"]
    print(f"imports {imports:.1f} s, loading {load:.1f} s (once); {p.eval.personas} personas, {p.sim.turns} turns, "
          f"{torch.get_num_threads()} threads, dtype {m['online']['dtype']['dtype']}\n")
    print("| path | seconds per evaluation (rounds) | prefill | decode | Q&A (in the total) | dialogues as the "
          "row above | Q&A answers as the first row | online.qa | online.reward |")
    print("|---|---|---|---|---|---|---|---|---|")
    first, above = next(iter(paths)), next(iter(paths))
    for name, ts in times.items():
        x, r = parts[name], reward[name]
        same = sum(u == v for u, v in zip(qa[name][0], qa[first][0]))
        print(f"| {name} | {', '.join(f'{t:.1f}' for t in ts)} | {x.get('prefill', 0):.1f} | {x.get('decode', 0):.1f} "
              f"| {x.get('qa', 0):.1f} | {'yes' if played[name] == played[above] else 'NO'} | {same} of "
              f"{len(qa[first][0])} | {qa[name][1]:.3f} | {r['mean']:.3f} [{r['lo']:.3f}, {r['hi']:.3f}] |")
        above = name
    mean = {k: sum(v) / len(v) for k, v in times.items()}
    print(f"\nratio before / now: {mean[first] / mean[list(paths)[-1]]:.2f}x")


if __name__ == "__main__":
    main()
