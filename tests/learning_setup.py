"""The learning experiment on the tiny model, shared by tests/test_online_learning.py (the offline
claim, asserted) and benchmarks/online_learning.py (the online measurement, over several seeds).

The simulator's `copy` world (facts to copy from the backstory, open asks to dodge) with a
behaviour policy that often contradicts its persona and invents open facts. The shared start is
behaviour cloning (`bc`, weight 1 on every logged turn) of that behaviour: it imitates the
contradictions. Every method is evaluated on the same held-out personas (paired by persona,
sampling at temperature 1: the distribution REINFORCE optimises), against its own warm start.
The tiny model needs ~1,500 bc steps of 16 sequences before it copies facts from the backstory
(after 800, online PPG only learns to dodge: reward +0.03, coverage -0.23)."""

import random
from dataclasses import replace
from pathlib import Path

from ppg.config import (BuildConfig, EvalConfig, LoraConfig, MlflowConfig, ModelConfig, OnlineConfig, Params,
                        ReturnsConfig, SimConfig, TrainConfig)

SETTING = {"copy": {"distance": [1, 2], "known": 5}}
BEHAVIOUR = {"consistent": 0.5, "contradict": 0.35, "evasive": 0.1, "tempt": 0.2, "keep": 0.8}
TURNS, PERSONAS = 6, 48
SPLITS = BuildConfig(max_length=1024, splits={"train": 0.9, "validation": 0.05, "test": 0.05})
METRICS = ("consistency", "persona", "commitment", "coverage", "reward")


def adam(lr, warmup, decay=True):
    sched = ({"type": "WarmupDecayLR", "params": {"warmup_min_lr": 0.0, "warmup_max_lr": lr, "warmup_num_steps": warmup,
                                                  "total_num_steps": "auto"}} if decay else
             {"type": "WarmupLR", "params": {"warmup_min_lr": lr, "warmup_max_lr": lr, "warmup_num_steps": 1}})
    return {"gradient_accumulation_steps": 1, "gradient_clipping": 1.0, "zero_optimization": {"stage": 0},
            "bf16": {"enabled": False}, "steps_per_print": 10 ** 9, "scheduler": sched,
            "optimizer": {"type": "AdamW", "params": {"lr": lr, "betas": [0.9, 0.98], "eps": 1e-8,
                                                      "weight_decay": 0.0, "torch_adam": True}}}


def bc_start(tmp: Path, tiny_model) -> tuple[Params, dict, str]:
    """Simulate 2,000 logged dialogues, build them, train bc for 1,500 steps and evaluate it.
    (params, bc's online metrics, the warm start's folder)"""
    from ppg.data.build import build_dataset
    from ppg.data.schema import write_dialogues
    from ppg.evaluate.run import evaluate
    from ppg.sim.simulate import simulate
    from ppg.train.offline import train

    sim = SimConfig(domain="copy", dialogues=2000, turns=TURNS, domains=SETTING, behaviour=BEHAVIOUR)
    write_dialogues(tmp / "imported/dialogues.jsonl", simulate("copy", 2000, TURNS, 0, sim))
    build_dataset(tmp / "imported", tmp / "built", tiny_model, "tiny", ["bc", "greedy"], {"length": 3}, SPLITS)
    gen = {"max_new_tokens": 24, "temperature": 1.0, "top_p": 1.0, "batch_size": 48}
    p = Params(model=ModelConfig(spec="tiny", base=""), sim=sim, returns=ReturnsConfig(policies=["bc", "greedy"]),
               train=TrainConfig(data=str(tmp / "built"), out=str(tmp / "models"), workdir=str(tmp / "work"),
                                 batch_size=16, max_steps=1500, checkpoint_every=10 ** 6,
                                 lora=LoraConfig(enabled=False), deepspeed=adam(3e-3, 50)),
               eval=EvalConfig(out=str(tmp / "eval"), personas=PERSONAS, turns=TURNS, qa=False, generation=gen,
                               dtype="float32"),  # the measured gains are of float32 rollouts
               mlflow=MlflowConfig(tracking_uri=f"sqlite:///{tmp}/mlflow.db", artifacts=str(tmp / "art")))
    train(p, "bc", progress=False)
    return p, evaluate(p, "bc", log=False)["online"], str(tmp / "models/bc")


def offline_greedy(p: Params, tmp: Path, warm: str) -> dict:
    """Offline PPG, greedy credit, 200 steps from the bc warm start: its online metrics."""
    from ppg.data.build import build_dataset
    from ppg.evaluate.run import evaluate
    from ppg.train.offline import train

    # the same dialogues, built with the warm start's saved tokenizer (a build records its tokenizer)
    build_dataset(tmp / "imported", tmp / "built-bc", warm, warm, ["greedy"], {"length": 3}, SPLITS)
    q = replace(p, model=ModelConfig(spec=warm, base=""), train=replace(
        p.train, data=str(tmp / "built-bc"), out=str(tmp / "offline"), max_steps=200, deepspeed=adam(1e-3, 10)))
    train(q, "greedy", progress=False)
    return evaluate(q, "greedy", log=False)["online"]


def online_k3(p: Params, tmp: Path, warm: str, seed: int = 0) -> dict:
    """Online PPG, K = 3, 100 steps of 8 personas x 4 rollouts from the bc warm start, with
    training seed `seed` (its rollouts): its online metrics on the same held-out personas."""
    from ppg.evaluate.run import evaluate
    from ppg.train.online import train_online

    q = replace(p, train=replace(p.train, seed=seed, out=str(tmp / f"online-{seed}"), workdir=str(tmp / "work-online"),
                                 deepspeed=adam(5e-4, 1, decay=False)),
                online=OnlineConfig(domain="copy", personas_per_step=8, group=4, turns=TURNS, steps=100, init=warm,
                                    generation={"max_new_tokens": 24, "temperature": 1.0, "top_p": 1.0,
                                                "batch_size": 32}))
    train_online(q, "k3", progress=False)
    return evaluate(q, "k3", run="k3-online", log=False)["online"]


def behaviour_metrics(p: Params) -> dict:
    """The behaviour policy's replies on the evaluation's held-out scenes, judged the same way."""
    from ppg.evaluate.online import online_metrics
    from ppg.sim.partner import rollout_scene, sim_world
    from ppg.sim.simulate import behaviour_replies, to_dialogue

    seed = p.eval.persona_seed(p.eval.split)
    eps, _, judge = sim_world(p.sim, "copy", PERSONAS, 1, TURNS, seed)  # the episodes evaluation plays
    ds = []
    for i, e in enumerate(eps):
        persona, windows, kind, partner = rollout_scene("copy", seed, i, TURNS, SETTING["copy"])
        replies = behaviour_replies(random.Random(f"behaviour:{i}"), persona, kind, TURNS, BEHAVIOUR)
        ds.append(to_dialogue(e.dialogue_id, "copy", persona, windows, partner, replies))
    return online_metrics(judge.judge(ds))


def paired(a: dict, b: dict, name: str = "reward"):
    """(mean improvement, 95% sign-flip interval) of b over a on the personas both played."""
    from ppg.gate import sign_flip_interval

    x, y = a[name]["per_unit"], b[name]["per_unit"]
    d = [y[k] - x[k] for k in sorted(x)]
    return sum(d) / len(d), sign_flip_interval(d)


def summary(m: dict) -> dict:
    return {k: round(m[k]["mean"], 3) for k in METRICS}


def kdemo_reduced(tmp: Path, warm: str, seed: int = 0, dialogues: int = 200, steps: int = 40,
                  personas: int = 32) -> dict:
    """The K demo (params.kdemo.yaml: its world, shaping and learning rate) reduced: from the bc
    warm start instead of the study base, 200 logged dialogues, 40 steps, 32 held-out personas.
    Returns policy -> online metrics for greedy, k3 and full. Measured first (2026-12-05, seeds
    0/1/2): greedy invents at 1.000 / 0.983 / 0.952 of open asks, k3 0.517 / 0.546 / 0.452, full
    0.511 / 0.489 / 0.435; greedy - k3 +0.483 / +0.437 / +0.500 and greedy - full +0.489 /
    +0.494 / +0.518, every 95% sign-flip lower bound >= 0.27 (28-30 paired personas); ~15 s."""
    import yaml

    from ppg.data.build import build_dataset
    from ppg.data.schema import write_dialogues
    from ppg.evaluate.run import evaluate
    from ppg.overlay import merged_text
    from ppg.sim.simulate import simulate
    from ppg.train.offline import train

    root = Path(__file__).resolve().parents[1]
    demo = Params.from_dict(yaml.safe_load(merged_text(root / "params.yaml", root / "params.kdemo.yaml")), "kdemo")
    sim = replace(demo.sim, dialogues=dialogues, seed=seed)
    write_dialogues(tmp / "kdemo/imported/dialogues.jsonl", simulate(sim.domain, dialogues, sim.turns, seed, sim))
    policies = ["greedy", "k3", "full"]
    build_dataset(tmp / "kdemo/imported", tmp / "kdemo/built", warm, warm, policies, {"length": 3}, SPLITS)
    lr = demo.train.deepspeed["optimizer"]["params"]["lr"]
    gen = {**demo.eval.generation, "batch_size": personas}
    p = replace(demo, model=ModelConfig(spec=warm, base=""), sim=sim, returns=replace(demo.returns, policies=policies),
                train=replace(demo.train, data=str(tmp / "kdemo/built"), out=str(tmp / "kdemo/models"),
                              workdir=str(tmp / "kdemo/work"), max_steps=steps, seed=seed,
                              deepspeed=adam(lr, max(1, steps // 20))),
                eval=replace(demo.eval, out=str(tmp / "kdemo/eval"), personas=personas, seed=1000 + 10 * seed,
                             generation=gen),
                mlflow=MlflowConfig(tracking_uri=f"sqlite:///{tmp}/mlflow.db", artifacts=str(tmp / "art")))
    out = {}
    for policy in policies:
        train(p, policy, progress=False)
        out[policy] = evaluate(p, policy, log=False)["online"]
    return out
