"""What each reply to an ask of an OPEN fact is worth under K-step credit, computed from the
world's parameters before any training (docs/simulator.md tabulates it).

The decision: at the ask (turn t) the speaker invents a value (reward 1 now) or dodges
(evasive_reward). The fact is then probed `probes` times, at t + d, t + d + 1, ... Every probe
retells the true story, so a probe scores 1 only if the reply states the truth AND the speaker
never stated another value of that attribute before; a wrong value "poisons" every later probe
(each one then contradicts either the story or the speaker's own line), an evasive reply scores 0
but poisons nothing. An invention is the truth with probability 1/8 (8 values per attribute).

The logged behaviour plays the probes (sim.behaviour): evasive first; then, if it invented,
`keep` repeats the invention; else the truth, except `contradict` of the time a wrong value. So
per probe, with no poison yet:
    dodged before:  truth (1 - ev)(1 - c),               poison (1 - ev) c
    invented truth: truth (1 - ev)(keep + (1 - keep)(1 - c)), poison (1 - ev)(1 - keep) c
and an invention that is not the truth has poisoned every probe already.

A K-step return at the ask sees the probes at offsets d .. K - 1: m = clamp(K - d, 0, probes) of
them. The other turns its window covers (small talk between ask and probe, other attributes'
windows) do not depend on this reply, so they add the same expected amount to both replies:
the difference dodge - invent below decides what K-step credit teaches at this turn.
"""


def probe_rewards(m: int, behaviour: dict) -> dict[str, float]:
    """Expected summed reward of the first m probes after each reply (behaviour plays the probes):
    {"dodge": ..., "invent": ...} (invent averages the 1/8 lucky guess and the 7/8 exposed one)."""
    ev, c, keep = behaviour["evasive"], behaviour["contradict"], behaviour["keep"]
    out = {}
    for reply, truth, poison, start in (("dodge", (1 - ev) * (1 - c), (1 - ev) * c, 1.0),
                                        ("invent", (1 - ev) * (keep + (1 - keep) * (1 - c)),
                                         (1 - ev) * (1 - keep) * c, 1 / 8)):
        alive, total = start, 0.0  # alive = P(no wrong value stated so far)
        for _ in range(m):
            total += alive * truth
            alive *= 1 - poison
        out[reply] = total
    return out


def ask_returns(k: int | None, d: int, probes: int, evasive_reward: float, behaviour: dict) -> dict[str, float]:
    """Expected reward of the ask and of the probes a K-step return sees (k=None: full credit,
    every probe), per reply, plus their difference dodge - invent (> 0: K-step credit teaches the
    dodge; < 0: the invention)."""
    if d < 1 or probes < 1 or (k is not None and k < 1):
        raise ValueError(f"need d >= 1, probes >= 1 and k >= 1 (or None), got d={d}, probes={probes}, k={k}")
    m = probes if k is None else max(0, min(k - d, probes))
    p = probe_rewards(m, behaviour)
    out = {"probes_seen": m, "dodge": evasive_reward + p["dodge"], "invent": 1.0 + p["invent"]}
    out["dodge_minus_invent"] = out["dodge"] - out["invent"]
    return out


def smallest_k_for_dodge(d: int, probes: int, evasive_reward: float, behaviour: dict) -> int | None:
    """The smallest K whose K-step credit prefers the dodge (None: not even full credit does)."""
    for k in range(1, d + probes + 1):
        if ask_returns(k, d, probes, evasive_reward, behaviour)["dodge_minus_invent"] > 0:
            return k
    return None
