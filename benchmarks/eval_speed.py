"""Online evaluation in float32 against bfloat16 (eval.dtype), side by side in one run: the time of
one evaluation (`ppg.evaluate.run.measure` on the simulator, eval's defaults: 8 personas, Q&A) and
how often the greedy tokens agree.

    python benchmarks/eval_speed.py [--model smollm2-135m] [--rounds 2]

Speed: the base model with fresh LoRA adapters (as `ppg evaluate` loads a LoRA policy), measured
float32 with the adapters unmerged (the path before), then eval.dtype float32 and bfloat16 (the
adapters folded in), `--rounds` interleaved rounds each. Agreement: the same 8 simulator dialogues
played greedily (T = 0) in both dtypes: per dialogue, the turns whose sampled ids are identical
until the first turn that differs (later contexts differ), and at that turn the top-2 logit
margin of the float32 model (a small margin is a near-tie that rounding flips).
"""

import argparse
import copy
import time

import torch


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--rounds", type=int, default=2, help="0: the agreement check only")
    a = ap.parse_args()
    from dataclasses import replace

    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from ppg.config import Params
    from ppg.evaluate.run import measure
    from ppg.models import eval_dtype, load_tokenizer, native_bf16, resolve_model
    from ppg.rollout import GenerationConfig, play
    from ppg.sim.partner import sim_world

    folder = resolve_model(a.model)
    tok = load_tokenizer(folder)
    base = AutoModelForCausalLM.from_pretrained(folder).eval()
    lora = get_peft_model(copy.deepcopy(base), LoraConfig(r=8, target_modules=["q_proj", "v_proj"])).eval()
    p = Params()
    print(f"{a.model}; native bf16: {native_bf16(torch.device('cpu'))}; {torch.get_num_threads()} threads; "
          f"eval: {p.eval.personas} personas, {p.sim.turns} turns, Q&A {p.eval.qa}, {p.eval.generation}\n")
    print("| path | seconds per evaluation (each round) | mean | reward |")
    print("|---|---|---|---|")
    paths = {"float32, adapters unmerged (before)": None, "float32, adapters folded": "float32",
             "bfloat16, adapters folded (auto here)": "bfloat16"}
    times = {k: [] for k in paths}
    rewards = {}
    for _ in range(a.rounds):
        for name, dtype in paths.items():
            model = copy.deepcopy(lora)
            q = replace(p, eval=replace(p.eval, dtype=dtype or "float32"))
            t0 = time.perf_counter()
            if dtype is None:  # the old path: the peft model sampled as loaded
                m, _, _ = measure(q, model, tok, "validation", "greedy", lora=False)
            else:
                m, _, _ = measure(q, model, tok, "validation", "greedy", lora=True)
            times[name].append(time.perf_counter() - t0)
            rewards[name] = m["online"]["reward"]["mean"]
    for name, ts in times.items() if a.rounds else ():
        print(f"| {name} | {', '.join(f'{t:.1f}' for t in ts)} | {sum(ts) / len(ts):.1f} | {rewards[name]:.3f} |")

    gen = GenerationConfig(**{**p.eval.generation, "temperature": 0.0})
    rolls = {}
    for setting in ("float32", "bfloat16"):
        dtype, _ = eval_dtype(setting, torch.device("cpu"))
        eps, partner, judge = sim_world(p.sim, p.sim.domain, p.eval.personas, 1, p.sim.turns, p.eval.seed)
        rolls[setting] = play(copy.deepcopy(base).to(dtype), tok, eps, partner, judge, gen, 0, with_tokens=True)[1]
    same, total, margins = 0, 0, []
    for r0, r1 in zip(rolls["float32"], rolls["bfloat16"]):
        turns = max(r0.turn_index) + 1
        for t in range(turns):
            total += 1
            if [x for x, i in zip(r0.input_ids, r0.turn_index) if i == t] == \
                    [x for x, i in zip(r1.input_ids, r1.turn_index) if i == t]:
                same += 1
                continue
            j = next(j for j, (u, v) in enumerate(zip(r0.input_ids, r1.input_ids)) if u != v)
            with torch.no_grad():
                top = base(torch.tensor([r0.input_ids[:j]])).logits[0, -1].topk(2).values
            margins.append(float(top[0] - top[1]))
            total += turns - t - 1  # the later turns of this dialogue are not compared
            break
    # teacher-forced: at every position float32 sampled greedily, does bfloat16 pick the same id
    # given the same context (the per-token agreement, without differences compounding)?
    bf16 = copy.deepcopy(base).to(torch.bfloat16)
    agree = picks = 0
    with torch.no_grad():
        for r in rolls["float32"]:
            ids = torch.tensor([r.input_ids])
            top = bf16(ids).logits[0].float().argmax(-1)
            for j in range(1, len(r.input_ids)):
                if r.turn_index[j] >= 0:
                    picks += 1
                    agree += int(top[j - 1]) == r.input_ids[j]
    print(f"\nteacher-forced on the float32 greedy dialogues: bfloat16 picks the same id at {agree} of {picks} "
          f"sampled positions ({agree / picks:.1%})")
    print(f"greedy, {len(rolls['float32'])} dialogues: {same} of {total} turns identical token for token before "
          f"a dialogue's first difference; {len(margins)} dialogues differ at some turn"
          + (f" (float32 top-2 logit margins there: {', '.join(f'{m:.2f}' for m in margins)})" if margins else ""))


if __name__ == "__main__":
    main()
