"""Rollouts: a policy model plays its persona against the simulator's partner, turn by turn, with
batched sampling; every turn is judged exactly (SimJudge). Used by online evaluation and online
PPG. Rollout dialogues are canonical Dialogues (source "simulator", judged rewards)."""

import random
from dataclasses import dataclass

import torch

from ppg.judges import SimJudge
from ppg.sim.simulate import SPEAKER, scene, to_dialogue


@dataclass
class GenerationConfig:
    max_new_tokens: int = 32
    """Longest reply, in tokens."""
    temperature: float = 0.7
    """Sampling temperature (0 = greedy)."""
    top_p: float = 0.9
    """Nucleus sampling."""
    batch_size: int = 8
    """Dialogues generated together."""


def scenes(domain: str, personas: int, group: int, turns: int, seed: int, setting: dict):
    """`personas` scenes, each repeated `group` times (rollouts of one persona share a scene)."""
    out = []
    for i in range(personas):
        sc = scene(random.Random(f"{seed}:{domain}:scene:{i}"), turns, setting)
        out += [(f"roll-{domain}-{seed}-{i:05d}-{g}", i, sc) for g in range(group)]
    return out


@torch.no_grad()
def play(model, tok, episodes, domain: str, gen: GenerationConfig, seed: int, judge: SimJudge):
    """Generate every episode's replies turn by turn; returns judged Dialogues (same order)."""
    device = next(model.parameters()).device
    torch.manual_seed(seed)
    was_training = model.training
    model.eval()
    dialogues = []
    for start in range(0, len(episodes), gen.batch_size):
        batch = episodes[start:start + gen.batch_size]
        histories = [[{"role": "system", "content": sc[0].backstory()}] for _, _, sc in batch]
        replies = [[] for _ in batch]
        for t in range(len(batch[0][2][3])):
            for h, (_, _, sc) in zip(histories, batch):
                h.append({"role": "user", "content": sc[3][t]})
            prompts = [tok.apply_chat_template(h, add_generation_prompt=True, tokenize=False) for h in histories]
            enc = tok(prompts, return_tensors="pt", padding=True, padding_side="left", add_special_tokens=False).to(device)
            sample = gen.temperature > 0
            out = model.generate(**enc, max_new_tokens=gen.max_new_tokens, do_sample=sample,
                                 temperature=gen.temperature if sample else None, top_p=gen.top_p if sample else None,
                                 pad_token_id=tok.pad_token_id)
            for i, h in enumerate(histories):
                text = tok.decode(out[i, enc["input_ids"].shape[1]:], skip_special_tokens=True).strip()
                replies[i].append(text)
                h.append({"role": "assistant", "content": text})
        for (did, _, (persona, windows, _, partner)), r in zip(batch, replies):
            dialogues.append(judge.judge_dialogue(to_dialogue(did, domain, persona, windows, partner, r)))
    model.train(was_training)
    return dialogues


def rewards_tensor(dialogues) -> torch.Tensor:
    """[B, T] per-turn rewards of the persona speaker (every rollout has the same T)."""
    return torch.tensor([[ln.reward for ln in d.turns(SPEAKER)] for d in dialogues], dtype=torch.float32)
