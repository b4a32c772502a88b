"""Who the policy plays against: the simulator, or real personas against a model partner (the
rollouts of online evaluation with eval.partner llm, and of online PPG with online.partner llm).

The policy plays a persona of a split of the judged data (evaluation: a held-out split, never a
persona it trained on; online PPG: the train split; the split is `ppg build`'s, persona groups
whole); a partner model plays the other role (therapist, teacher, chat partner) from the
project's prompt for the domain, with a brevity reminder, and opens the dialogue. Any Judge with
verdicts for new text scores the turns (judge.kind llm or reward-model; logged labels cannot judge
a rollout).
"""

import random
from dataclasses import replace
from pathlib import Path

from ppg.data.build import assign_splits
from ppg.data.turns import persona_groups, persona_id
from ppg.rollout import Episode

ROLES = {  # domain -> (partner's role name, what the partner is asked to do)
    "therapy": ("therapist", "You are a therapist in a one-on-one online session. Help the patient reflect on "
                             "their feelings and the patterns in their life; ask about what they tell you."),
    "education": ("teacher", "You are a teacher guiding one student through a topic at their level. Explain, "
                             "then ask the student questions and build on their answers."),
    "chatting": ("partner", "You are chatting online with someone you have just met. Take turns asking about "
                            "their life, work and interests, and share a little about yourself."),
}
# Q&A consistency after a real-persona dialogue: what the partner asks about the backstory (eval.qa;
# eval.qa_questions replaces them per domain, e.g. with questions written for each persona pool).
QUESTIONS = {
    "therapy": ["What brought you to these sessions?", "How would you describe your family?",
                "What is your daily life like, at work or at home?"],
    "education": ["What grade or level of school are you in?", "How do you like to learn something new?",
                  "What do you find hardest when you study?"],
    "chatting": ["Where do you live?", "What do you do for a living?", "What do you like to do in your free time?"],
}
REMINDER = "Answer in two sentences or fewer, and do not repeat what was already said."
# A chat template needs a user turn before the partner's first line; a bracketed stage direction
# was echoed back by small models ("(I'm ready to begin.)"), a plain cue is not.
OPENING = "The {speaker} has just joined. Say your first line to them."


def partner_prompt(domain: str, topic: str | None = None) -> tuple[str, str]:
    """(role name, system prompt) of the partner in a domain; an unknown domain chats. topic: what
    the teacher teaches (a persona pool's education entries name one)."""
    role, task = ROLES.get(domain, ROLES["chatting"])
    if topic and domain == "education":
        task = task.replace("through a topic", f"through {topic}")
    return role, f"{task} {REMINDER}"


def qa_questions(path: str) -> dict[str, list[str]]:
    """The Q&A questions per domain: the project's (QUESTIONS), with those of a JSON file
    {domain: [question, ...]} in place of a domain's when path is set."""
    import json

    out = dict(QUESTIONS)
    if path:
        data = json.loads(Path(path).read_text())
        bad = [k for k, v in data.items() if not (isinstance(v, list) and v and all(isinstance(q, str) and q.strip()
                                                                                   for q in v))] \
            if isinstance(data, dict) else ["(the file)"]
        if bad:
            raise ValueError(f"{path}: eval.qa_questions needs {{domain: [question, ...]}} with non-empty questions; "
                             f"bad: {bad}")
        out.update(data)
    return out


def real_episodes(dialogues, build_cfg, split: str) -> list[Episode]:
    """Episodes for the distinct personas of `split` (train, validation or test), assigned as
    `ppg build` assigns them: persona groups whole, build.splits, build.folds, build.seed."""
    dialogues = [d for d in dialogues if d.evaluated_speakers]
    splits, _ = assign_splits(persona_groups(dialogues), build_cfg.splits, build_cfg.folds, build_cfg.seed)
    out, seen = [], set()
    for d, sp in zip(dialogues, splits):
        for s in d.evaluated_speakers:
            persona = d.personas[s]
            if sp != split or persona in seen:
                continue
            seen.add(persona)
            role, _ = partner_prompt(d.domain)
            out.append(Episode(f"real-{split}-{len(out):05d}", len(out), s, persona, role, d.domain,
                               meta={"persona_of": d.dialogue_id}))
    return out


def file_episodes(personas: list[dict], train: list[Episode], where: str) -> list[Episode]:
    """Episodes for a persona file (ppg.data.personas), refusing any persona of the training split:
    evaluation never meets a persona the policy trained on."""
    seen = {persona_id(e.domain, e.persona) for e in train}
    out = []
    for i, x in enumerate(personas):
        if persona_id(x["domain"], x["persona"]) in seen:
            raise ValueError(f"{where}: persona {i + 1} ({x['persona'][:40]!r}...) is one of the train split's "
                             f"personas; evaluation must not meet a persona the policy trained on")
        role, _ = partner_prompt(x["domain"])
        out.append(Episode(f"persona-{i:05d}", i, x["speaker"], x["persona"], role, x["domain"],
                           meta={"persona_file": where, **({"persona_meta": x["meta"]} if x.get("meta") else {})}))
    return out


def partner_chat(e: Episode) -> tuple[str, str]:
    """(system prompt, opening cue) of the partner in an episode."""
    _, system = partner_prompt(e.domain, (e.meta.get("persona_meta") or {}).get("topic"))
    return system, OPENING.format(speaker=e.speaker)


class RolloutWorld:
    """Who the policy plays against, set up once (the partner model loaded, the judge built, the
    split's personas read): draw() gives each batch of episodes. simulator: scenes of the draw's
    seed with the exact judge. llm: a seeded draw of the personas of `split` of judge.out against
    eval.partner_model, judged by judge_cfg (default: the judge section; evaluation passes
    p.eval_judge()); personas_file (evaluation): a persona list in place of the split's personas.
    turns: partner lines per dialogue (0 = sim.turns)."""

    def __init__(self, p, partner: str, split: str, gen, domain: str | None = None, turns: int = 0,
                 judge_cfg=None, personas_file: str = ""):
        self.p, self.partner_kind, self.turns = p, partner, turns or p.sim.turns
        if partner == "simulator":
            self.domain = domain or p.sim.domain
            if self.domain not in p.sim.domains:
                raise ValueError(f"domain: {self.domain!r} is not one of {sorted(p.sim.domains)} (sim.domains)")
            return
        from ppg.data.schema import read_dialogues
        from ppg.judges.independent import reward_judges
        from ppg.judges.kinds import build_judge

        src = Path(p.judge.out) / "dialogues.jsonl"
        dialogues = read_dialogues(src)
        if personas_file:  # a persona list instead of the split's personas, checked against the train split
            from ppg.data.personas import read_personas

            self.pool = file_episodes(read_personas(Path(personas_file)), real_episodes(dialogues, p.build, "train"),
                                      personas_file)
        else:
            self.pool = real_episodes(dialogues, p.build, split)
        if domain:
            self.pool = [e for e in self.pool if e.domain == domain]
        self.rewards_by = reward_judges(dialogues)  # who judged the data a policy trains on
        if not self.pool:
            raise ValueError(f"partner llm: {personas_file or src} has no persona"
                             f"{'' if personas_file else f' in the {split} split'}"
                             f"{f' of domain {domain!r}' if domain else ''}")
        self.partner = llm_partner(p, self.turns, gen)
        self.judge = build_judge(judge_cfg or p.judge)

    def partner_identity(self) -> dict | None:
        """Who plays the partner (None: the simulator); part of metrics.json and of online
        training's run identity."""
        return None if self.partner_kind == "simulator" else partner_identity(self.p)

    def draw(self, seed: int, personas: int, group: int):
        """(episodes, partner, judge): `personas` personas, each played `group` times (one group
        each); the episodes' domain is the one they were drawn from."""
        if self.partner_kind == "simulator":
            from ppg.sim.partner import sim_world

            return sim_world(self.p.sim, self.domain, personas, group, self.turns, seed)
        drawn = sorted(random.Random(seed).sample(self.pool, min(personas, len(self.pool))), key=lambda e: e.group)
        eps = [e if group == 1 else replace(e, dialogue_id=f"{e.dialogue_id}-{g}", group=i)
               for i, e in enumerate(drawn) for g in range(group)]
        return eps, self.partner, self.judge


def partner_identity(p) -> dict:
    """The llm partner's identity: its endpoint and model name, or the model spec in process."""
    ep = p.eval.partner_endpoint
    if ep.base_url:
        return {"kind": "endpoint", "base_url": ep.base_url, "model": ep.model}
    return {"kind": "in-process", "model": p.eval.partner_model or p.model.spec}


def llm_partner(p, turns: int, gen, transport=None):
    """The llm partner of params p: behind eval.partner_endpoint when its base_url is set, else
    eval.partner_model (model.spec when "") loaded here in eval.dtype (ppg.partner_models)."""
    from ppg.partner_models import EndpointPartner, InProcessPartner

    if p.eval.partner_endpoint.base_url:
        return EndpointPartner(p.eval.partner_endpoint, turns, gen, partner_chat, transport=transport)
    from transformers import AutoModelForCausalLM

    from ppg.models import base_model, eval_device, eval_dtype, load_tokenizer, resolve_model

    folder = resolve_model(p.eval.partner_model) if p.eval.partner_model else base_model(p)
    dtype, _ = eval_dtype(p.eval.dtype, eval_device())  # it samples as the policy does in evaluation
    model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=dtype).to(eval_device()).eval()
    return InProcessPartner(model, load_tokenizer(folder), turns, gen, partner_chat)
