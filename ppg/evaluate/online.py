"""Online evaluation: rates of judged rollouts (prompt-to-line = persona, line-to-line =
commitment, both = consistency, reward, fact coverage), each with a 95% interval over dialogues,
the per-turn consistency curve (drift), Q&A on the backstory after the dialogue, and the same
rollouts judged again by an LLM judge when one is configured."""

import torch

from ppg.stats import mean_ci, wilson
from ppg.judges.base import consistent, verdict_rates
from ppg.judges.cache import VerdictCache
from ppg.judges.llm import LLMJudge
from ppg.rollout import GenerationConfig
from ppg.sim.world import ASK, mentions


def online_metrics(dialogues, qa: list[list[bool]] | None = None) -> dict:
    """Per-dialogue rates of judged rollouts (ppg.judges.base.verdict_rates: what any judge's
    verdicts add up to), averaged over dialogues with 95% intervals, and the per-turn consistency
    curve (drift). A dialogue without a verdict for a rate is not a unit of it."""
    keys = ("consistency", "persona", "commitment", "reward", "coverage")
    per: dict[str, list] = {k: [] for k in keys}
    units: dict[str, list] = {k: [] for k in keys}
    by_turn: dict[int, list[int]] = {}
    for d in dialogues:
        lines = d.turns(d.evaluated_speakers[0])
        rates = verdict_rates(lines)
        for k in keys:
            if rates[k] is not None:
                per[k].append(rates[k])
                units[k].append(d.dialogue_id)
        for t, ln in enumerate(lines):
            ok = consistent(ln.judge)
            if ok is not None:
                by_turn.setdefault(t, []).append(ok)
    out = {k: mean_ci(per[k], (0.0, 1.0), units[k]) for k in keys}
    out["drift"] = [{"turn": t, "mean": sum(x) / len(x), "lo": wilson(sum(x), len(x))[0],
                     "hi": wilson(sum(x), len(x))[1], "n": len(x)} for t, x in sorted(by_turn.items())]
    ids = [d.dialogue_id for d in dialogues]
    if qa is not None:
        out["qa"] = mean_ci([sum(q) / len(q) for q in qa if q], (0.0, 1.0), [i for i, q in zip(ids, qa) if q])
    out["dialogues"] = len(dialogues)
    return out


@torch.no_grad()
def backstory_qa(model, tok, dialogues, gen) -> list[list[bool]]:
    """After each dialogue, ask every fact its backstory states; correct = the answer states it."""
    gen = GenerationConfig(max_new_tokens=gen.max_new_tokens, temperature=0.0, batch_size=gen.batch_size)
    device = next(model.parameters()).device
    items = []
    for i, d in enumerate(dialogues):
        p = d.meta["sim"]["persona"]
        speaker = d.evaluated_speakers[0]
        history = [{"role": "system", "content": d.personas[speaker]}] + [
            {"role": "assistant" if ln.speaker == speaker else "user", "content": ln.text} for ln in d.lines]
        items += [(i, a, p["facts"][a], history + [{"role": "user", "content": ASK[a]}]) for a in p["known"]]
    results = [[] for _ in dialogues]
    for s in range(0, len(items), gen.batch_size):
        chunk = items[s:s + gen.batch_size]
        prompts = [tok.apply_chat_template(m, add_generation_prompt=True, tokenize=False) for *_, m in chunk]
        enc = tok(prompts, return_tensors="pt", padding=True, padding_side="left", add_special_tokens=False).to(device)
        out = model.generate(**enc, max_new_tokens=gen.max_new_tokens, do_sample=False, pad_token_id=tok.pad_token_id)
        for j, (i, a, truth, _) in enumerate(chunk):
            answer = tok.decode(out[j, enc["input_ids"].shape[1]:], skip_special_tokens=True)
            results[i].append((a, truth) in mentions(answer))
    return results


def llm_metrics(dialogues, judge_cfg) -> dict:
    """The rollouts judged again by an LLM judge: per-dialogue share of consistent turns among
    those with a verdict (prompt-to-line and line-to-line, as judge.require says), and
    the per-dialogue share of turns left without one (never counted as 0 or 1). Raises
    JudgeError when the endpoint stays down."""
    lj = LLMJudge(judge_cfg, cache=VerdictCache(judge_cfg.cache))  # a rerun after a failure resumes
    judged = lj.judge(dialogues)
    rewards = [[ln.reward for ln in d.turns(d.evaluated_speakers[0])] for d in judged]
    known = [[r for r in rs if r is not None] for rs in rewards]
    ids = [d.dialogue_id for d, k in zip(judged, known) if k]
    shares = [(len(rs) - len(k)) / max(len(rs), 1) for rs, k in zip(rewards, known)]
    return {"consistency": mean_ci([sum(k) / len(k) for k in known if k], (0.0, 1.0), ids),
            "unknown_share": mean_ci(shares, (0.0, 1.0), [d.dialogue_id for d in judged]), "counts": dict(lj.counts)}
