"""Simulated persona dialogues with an exact judge: where the credit horizon K matters.

A dialogue is a schedule of windows over the persona speaker's T turns. In a window the partner
ASKs about an attribute at turn t and PROBEs it d turns later (d from the domain's distance
setting; "end" = at the end of the dialogue), and again at each of the next probes - 1 turns
(the setting's probes, default 1); other turns are small talk. For a fact the
backstory states, the probe re-asks it. For an OPEN fact (the backstory is silent, the story has
a hidden true value) the honest reply to the ask is evasive (reward below 1) and the tempting
reply invents a value (reward 1 now); the probe then retells the true story, and an invented
value that differs from it is exposed: whatever the speaker says, that probe (and every later
one) scores 0. So the tempting reply gains now and loses d turns later; greedy credit cannot see
the loss. ppg.sim.expected computes what each reply is worth under each K.

Nothing here decides which K wins: the behaviour policy's mix is a parameter, and so is d.
"""

import random

from ppg.data.schema import Dialogue
from ppg.sim.world import (AFFIRM, ASK, ATTRIBUTES, EVASIVE, FILLER_PARTNER, FILLER_REPLY, INSIST, RECALL,
                           REVEAL, first_person, sample_persona, second_person)

PARTNER, SPEAKER = "partner", "persona"


def schedule(rng: random.Random, turns: int, distance: list, probes: int = 1) -> list[tuple[str, int, int]]:
    """Windows (attribute, ask turn, probe turn), one per probe: each attribute is probed `probes`
    times in a row, the first d turns after its ask. Finite d: consecutive windows [t, t+d+probes-1];
    "end": the probes take the last free turns, so such windows nest and reach the end."""
    attrs = sorted(ATTRIBUTES)
    rng.shuffle(attrs)
    windows, t, last_free = [], 0, turns - 1
    while attrs and t + probes <= last_free:
        d = rng.choice(distance)
        if d == "end":
            a = attrs.pop()
            windows += [(a, t, last_free - i) for i in reversed(range(probes))]
            t, last_free = t + 1, last_free - probes
        elif t + d + probes - 1 <= last_free:
            a = attrs.pop()
            windows += [(a, t, t + d + i) for i in range(probes)]
            t += d + probes
        else:
            break
    return windows


def _upper_first(s: str) -> str:
    return s[:1].upper() + s[1:]


def _wrong(rng, a, *not_these):
    return rng.choice([v for v in ATTRIBUTES[a] if v not in not_these])


def scene(rng: random.Random, turns: int, setting: dict):
    """A persona, its ask/probe windows and the partner's line before each of its turns. The
    partner does not depend on the speaker's replies, so the same scene serves logged
    (behaviour) dialogues and rollouts of a trained policy (ppg.sim.partner)."""
    persona = sample_persona(rng, setting["known"])
    windows = schedule(rng, turns, setting["distance"], setting.get("probes", 1))
    kind = {t: ("filler", None) for t in range(turns)}
    for a, ask, probe in windows:
        kind[ask], kind[probe] = ("ask", a), ("probe", a)
    partner = []
    for t in range(turns):
        k, a = kind[t]
        if k == "filler":
            partner.append(rng.choice(FILLER_PARTNER))
        elif k == "ask":
            partner.append(ASK[a])
        elif a in persona.known:
            partner.append(RECALL[a])
        else:
            partner.append(REVEAL.format(fact=_upper_first(second_person(a, persona.facts[a]))))
    return persona, windows, kind, partner


def scene_meta(persona, windows) -> dict:
    """What a simulator dialogue records for its judge and for segment credit: the persona's facts,
    the ask/probe windows, and the segment starts (the asks)."""
    starts = sorted({0} | {ask for _, ask, _ in windows})
    return {"segment_starts": {SPEAKER: starts}, "sim": {"persona": persona.to_json(), "windows": windows}}


def turn_kinds(persona, windows, turns: int) -> list[str]:
    """The kind of each persona turn, known from the partner's line before the reply: filler,
    ask-stated (the backstory states the fact), ask-open (it does not: the tempting decision) or
    probe. The turn_kind baseline compares like with like on this key."""
    kinds = ["filler"] * turns
    for a, ask, probe in windows:
        kinds[ask] = "ask-stated" if a in persona.known else "ask-open"
        kinds[probe] = "probe"
    return kinds


def to_dialogue(dialogue_id, domain, persona, windows, partner, replies) -> Dialogue:
    lines = []
    for p, r, k in zip(partner, replies, turn_kinds(persona, windows, len(replies))):
        lines += [{"speaker": PARTNER, "text": p}, {"speaker": SPEAKER, "text": r, "meta": {"kind": k}}]
    return Dialogue.model_validate({
        "dialogue_id": dialogue_id, "domain": domain, "source": "simulator",
        "personas": {SPEAKER: persona.backstory(), PARTNER: ""}, "evaluated_speakers": [SPEAKER],
        "lines": lines, "meta": scene_meta(persona, windows)})


def simulate_dialogue(rng: random.Random, dialogue_id: str, domain: str, turns: int, setting: dict,
                      behaviour: dict) -> Dialogue:
    """One dialogue of `turns` persona turns, replies drawn from the behaviour mix."""
    persona, windows, kind, partner = scene(rng, turns, setting)
    replies = behaviour_replies(rng, persona, kind, turns, behaviour)
    return to_dialogue(dialogue_id, domain, persona, windows, partner, replies)


def behaviour_replies(rng: random.Random, persona, kind: dict, turns: int, behaviour: dict) -> list[str]:
    """The behaviour policy's replies to a scene (also played on held-out scenes, to compare a
    trained policy with the behaviour that logged its data on the same personas)."""
    said: dict[str, str] = {}  # the speaker's commitments so far
    replies = []
    for t in range(turns):
        k, a = kind[t]
        r = rng.random()
        if k == "filler":
            reply = rng.choice(FILLER_REPLY)
        elif k == "ask":
            if a in persona.known:
                value = (persona.facts[a] if r < behaviour["consistent"] else
                         _wrong(rng, a, persona.facts[a]) if r < behaviour["consistent"] + behaviour["contradict"]
                         else None)
            else:  # open: tempted to invent a value, else dodge honestly
                value = rng.choice(ATTRIBUTES[a]) if r < behaviour["tempt"] else None
            reply = first_person(a, value) if value else rng.choice(EVASIVE)
            if value:
                said[a] = value
        else:
            truth = persona.facts[a]
            if r < behaviour["evasive"]:
                value = None
            elif a in said and rng.random() < behaviour["keep"]:
                value = said[a]  # sticks to what it said before
            else:
                value = truth if rng.random() >= behaviour["contradict"] else _wrong(rng, a, truth)
            if value is None:
                reply = rng.choice(EVASIVE)
            elif a in persona.known:
                reply = first_person(a, value)
            else:
                reply = (AFFIRM if value == truth else INSIST).format(fact=first_person(a, value))
        replies.append(reply)
    return replies


def simulate(domain: str, dialogues: int, turns: int, seed: int, cfg) -> list[Dialogue]:
    """N judged dialogues; the same (domain, N, T, seed, cfg) gives byte-identical output."""
    from ppg.sim.judge import SimJudge

    if domain not in cfg.domains:
        raise ValueError(f"domain: {domain!r} is not one of {sorted(cfg.domains)} (sim.domains in params.yaml)")
    if turns < 2:
        raise ValueError(f"turns: need at least 2 persona turns, got {turns}")
    judge = SimJudge(cfg.evasive_reward, cfg.require)
    out = []
    for i in range(dialogues):
        rng = random.Random(f"{seed}:{domain}:{i}")
        d = simulate_dialogue(rng, f"sim-{domain}-{seed}-{i:06d}", domain, turns, cfg.domains[domain], cfg.behaviour)
        out.append(judge.judge_dialogue(d))
    return out
