"""Online evaluation: rates of judged rollouts (prompt-to-line = persona, line-to-line =
commitment, both = consistency, reward, fact coverage), each with a 95% interval over dialogues,
the per-turn consistency curve (drift), Q&A on the backstory after the dialogue, and the same
rollouts judged again by an LLM judge when one is configured."""

import torch

from ppg.stats import mean_ci, wilson
from ppg.judges.base import consistent
from ppg.judges.cache import VerdictCache
from ppg.judges.llm import LLMJudge
from ppg.sim.world import ASK, mentions


def online_metrics(dialogues, qa: list[list[bool]] | None = None, engagement_words: int = 12) -> dict:
    """Every per-dialogue metric of the metric table (ppg.metrics.METRICS: rates of what any
    judge's verdicts add up to, engagement of the text, whoever judges), averaged over dialogues
    with 95% intervals, and the per-turn consistency curve (drift). A dialogue without a value
    for a metric (no verdict for its rate) is not a unit of it."""
    from ppg.metrics import METRICS

    per_dialogue = {name.removeprefix("online."): m.per_dialogue for name, m in METRICS.items()
                    if name.startswith("online.") and m.per_dialogue is not None}
    settings = {"engagement_words": engagement_words}
    per: dict[str, list] = {k: [] for k in per_dialogue}
    units: dict[str, list] = {k: [] for k in per_dialogue}
    by_turn: dict[int, list[int]] = {}
    by_turn_persona: dict[int, list[int]] = {}
    for d in dialogues:
        lines = d.turns(d.evaluated_speakers[0])
        for k, value_of in per_dialogue.items():
            value = value_of(lines, settings)
            if value is not None:
                per[k].append(value)
                units[k].append(d.dialogue_id)
        for t, ln in enumerate(lines):
            ok, fits = consistent(ln.judge), (ln.judge or {}).get("persona")
            if ok is not None:
                by_turn.setdefault(t, []).append(ok)
            if fits is not None:
                by_turn_persona.setdefault(t, []).append(int(fits))
    out = {k: mean_ci(per[k], (0.0, 1.0), units[k]) for k in per_dialogue}
    # the drift curve is of consistency; a judge without line-to-line verdicts (the reward model)
    # gives it of prompt-to-line, and says so
    out["drift_of"] = "consistency" if by_turn or not by_turn_persona else "persona"
    out["drift"] = [{"turn": t, "mean": sum(x) / len(x), "lo": wilson(sum(x), len(x))[0],
                     "hi": wilson(sum(x), len(x))[1], "n": len(x)}
                    for t, x in sorted((by_turn or by_turn_persona).items())]
    ids = [d.dialogue_id for d in dialogues]
    if qa is not None:
        out["qa"] = mean_ci([sum(q) / len(q) for q in qa if q], (0.0, 1.0), [i for i, q in zip(ids, qa) if q])
    out["dialogues"] = len(dialogues)
    return out


@torch.no_grad()
def answers_after(model, tok, asks: list[tuple], gen) -> list[str]:
    """Greedy answers to questions asked after dialogues: asks = (dialogue, question). The speaker
    sees its persona and the whole dialogue, as in the rollout, then the question. The questions
    of one dialogue share its encoding: their prompts' common prefix of ids is fed once, then
    each branches off with its own question (gen.backend "generate" re-encodes every prompt)."""
    from dataclasses import replace

    from ppg.generation import backend

    greedy = replace(gen, temperature=0.0)
    ids, of = [], {}  # of: dialogue -> its asks, in order
    for j, (d, question) in enumerate(asks):
        speaker = d.evaluated_speakers[0]
        msgs = [{"role": "system", "content": d.personas[speaker]}] + [
            {"role": "assistant" if ln.speaker == speaker else "user", "content": ln.text} for ln in d.lines]
        ids.append(tok(tok.apply_chat_template(msgs + [{"role": "user", "content": question}],
                                               add_generation_prompt=True, tokenize=False),
                       add_special_tokens=False)["input_ids"])
        of.setdefault(id(d), []).append(j)
    groups = list(of.values())
    per_batch = max(1, gen.batch_size // max(len(g) for g in groups))  # about batch_size answers at once
    replies, answers = backend(greedy, tok, model), [None] * len(asks)
    for s in range(0, len(groups), per_batch):
        batch = groups[s:s + per_batch]
        shared = []
        for g in batch:  # the longest prefix every prompt of the dialogue has, leaving each >= 1 id
            n = min(len(ids[j]) for j in g) - 1
            first = ids[g[0]]
            n = next((i for i in range(n) if any(ids[j][i] != first[i] for j in g)), n)
            shared.append(n)
        replier = replies.batch(len(batch))
        replier.extend([ids[g[0]][:n] for g, n in zip(batch, shared)])
        rows = [(b, j) for b, g in enumerate(batch) for j in g]
        replier.branch([b for b, _ in rows])
        out = replier.reply(list(range(len(rows))), [ids[j][shared[b]:] for b, j in rows])
        for (_, j), a in zip(rows, out):
            answers[j] = tok.decode(a, skip_special_tokens=True).strip()
    return answers


def backstory_qa(model, tok, dialogues, gen) -> list[list[bool]]:
    """Simulator: after each dialogue, ask every fact its backstory states; correct = the answer
    states it (the simulator knows the facts)."""
    items = [(i, a, d.meta["sim"]["persona"]["facts"][a]) for i, d in enumerate(dialogues)
             for a in d.meta["sim"]["persona"]["known"]]
    answers = answers_after(model, tok, [(dialogues[i], ASK[a]) for i, a, _ in items], gen)
    results = [[] for _ in dialogues]
    for (i, a, truth), answer in zip(items, answers):
        results[i].append((a, truth) in mentions(answer))
    return results


def persona_qa(model, tok, dialogues, judge, gen, questions: dict[str, list[str]]) -> tuple[list[list[int]], int]:
    """Real personas: after each dialogue the partner asks the questions of its domain about the
    backstory, the speaker answers, and the judge gives each answer its prompt-to-line verdict
    (does it fit the backstory?) as a new line of the dialogue. (per-dialogue known verdicts,
    answers left without one): an unknown verdict is counted, not scored."""
    from ppg.data.schema import Dialogue

    asks = [(i, d, q) for i, d in enumerate(dialogues) for q in questions.get(d.domain, [])]
    answers = answers_after(model, tok, [(d, q) for _, d, q in asks], gen)
    probes = []
    for (i, d, q), answer in zip(asks, answers):
        speaker = d.evaluated_speakers[0]
        partner = next(s for s in d.personas if s != speaker)
        data = d.model_dump()
        data["dialogue_id"] = f"{d.dialogue_id}-qa{len(probes)}"
        # the dialogue's lines keep their verdicts: a judge that keeps known verdicts (build_judge's,
        # unless judge.overwrite) asks only about the answer, with the same history as before
        data["lines"] += [{"speaker": partner, "text": q}, {"speaker": speaker, "text": answer or "..."}]
        probes.append(Dialogue.model_validate(data))
    results, unknown = [[] for _ in dialogues], 0
    for (i, _, _), judged in zip(asks, judge.judge(probes)):
        verdict = (judged.lines[-1].judge or {}).get("persona")
        if verdict is None:
            unknown += 1
        else:
            results[i].append(int(verdict))
    return results, unknown


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
