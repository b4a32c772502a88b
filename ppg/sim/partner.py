"""The simulator as the other side of a rollout: a Partner that says the scene's scripted line
before each persona turn (it does not react to replies, so one scene serves logged behaviour
dialogues and a trained policy's rollouts alike), and the exact judge of what was said."""

import random

from ppg.sim.judge import SimJudge
from ppg.rollout import Episode
from ppg.sim.simulate import PARTNER, SPEAKER, scene, scene_meta


class SimPartner:
    def __init__(self):
        self.scripts: dict[str, list[str]] = {}  # dialogue id -> the partner's line before each turn

    def reply(self, episodes: list[Episode]) -> list[str | None]:
        out = []
        for e in episodes:
            script, said = self.scripts[e.dialogue_id], len(e.partner_lines())
            out.append(script[said] if said < len(script) else None)
        return out


def rollout_scene(domain: str, seed: int, i: int, turns: int, setting: dict):
    """The i-th rollout scene of (domain, seed), the same for every model that plays it."""
    return scene(random.Random(f"{seed}:{domain}:scene:{i}"), turns, setting)


def sim_world(cfg, domain: str, personas: int, group: int, turns: int, seed: int):
    """(episodes, partner, judge) for `personas` scenes of the domain (cfg: SimConfig), each
    played `group` times (rollouts of one persona share a scene and a group)."""
    partner, episodes = SimPartner(), []
    for i in range(personas):
        persona, windows, _, lines = rollout_scene(domain, seed, i, turns, cfg.domains[domain])
        for g in range(group):
            did = f"roll-{domain}-{seed}-{i:05d}-{g}"
            partner.scripts[did] = lines
            episodes.append(Episode(did, i, SPEAKER, persona.backstory(), PARTNER, domain, "simulator",
                                    scene_meta(persona, windows)))
    return episodes, partner, SimJudge(cfg.evasive_reward, cfg.require)
