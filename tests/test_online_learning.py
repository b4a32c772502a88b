"""Learning, end to end on the tiny model: offline PPG on the behaviour policy's logs, then
online PPG (K=3, judged rollouts) from that warm start, measured on held-out personas against
the behaviour policy played on the SAME personas. Slow (about 3.5 minutes on 2 cores): the tiny
model needs ~1,500 steps of 16 sequences before it copies facts from the backstory (with 8
sequences per step or 800 steps it does not: persona consistency stays near 0.56-0.66)."""

import json
import random

import pytest

from ppg.config import (BuildConfig, EvalConfig, LoraConfig, MlflowConfig, ModelConfig, OnlineConfig, Params,
                        ReturnsConfig, SimConfig, TrainConfig)

SETTING = {"copy": {"distance": [1, 2], "known": 5}}
# a behaviour policy that often contradicts its persona and invents open facts
BEHAVIOUR = {"consistent": 0.5, "contradict": 0.35, "evasive": 0.1, "tempt": 0.2, "keep": 0.8}
TURNS, PERSONAS = 6, 48


def adam(lr, warmup, decay=True):
    sched = ({"type": "WarmupDecayLR", "params": {"warmup_min_lr": 0.0, "warmup_max_lr": lr, "warmup_num_steps": warmup,
                                                  "total_num_steps": "auto"}} if decay else
             {"type": "WarmupLR", "params": {"warmup_min_lr": lr, "warmup_max_lr": lr, "warmup_num_steps": 1}})
    return {"gradient_accumulation_steps": 1, "gradient_clipping": 1.0, "zero_optimization": {"stage": 0},
            "bf16": {"enabled": False}, "steps_per_print": 10 ** 9, "scheduler": sched,
            "optimizer": {"type": "AdamW", "params": {"lr": lr, "betas": [0.9, 0.98], "eps": 1e-8,
                                                      "weight_decay": 0.0, "torch_adam": True}}}


def behaviour_metrics(p):
    """The behaviour policy's replies on the evaluation's held-out scenes, judged the same way."""
    from ppg.evaluate import online_metrics
    from ppg.judges import SimJudge
    from ppg.rollout import scenes
    from ppg.sim.simulate import behaviour_replies, to_dialogue

    judge = SimJudge(p.sim.evasive_reward, p.sim.require)
    seed = p.eval.persona_seed(p.eval.split)
    ds = []
    for did, i, (persona, windows, kind, partner) in scenes("copy", PERSONAS, 1, TURNS, seed, SETTING["copy"]):
        replies = behaviour_replies(random.Random(f"behaviour:{i}"), persona, kind, TURNS, BEHAVIOUR)
        ds.append(judge.judge_dialogue(to_dialogue(did, "copy", persona, windows, partner, replies)))
    return online_metrics(ds, judge)


@pytest.mark.slow
def test_online_ppg_beats_the_behaviour_policy_at_higher_coverage(tmp_path, tiny_model):
    from ppg.data.build import build_dataset
    from ppg.data.schema import write_dialogues
    from ppg.evaluate import evaluate
    from ppg.online import train_online
    from ppg.sim.simulate import simulate
    from ppg.train import train

    sim = SimConfig(domain="copy", dialogues=2000, turns=TURNS, domains=SETTING, behaviour=BEHAVIOUR)
    write_dialogues(tmp_path / "imported/dialogues.jsonl", simulate("copy", 2000, TURNS, 0, sim))
    build_dataset(tmp_path / "imported", tmp_path / "built", tiny_model, "tiny", ["greedy", "k3"], {"length": 3},
                  BuildConfig(max_length=1024, splits={"train": 0.9, "validation": 0.05, "test": 0.05}))
    gen = {"max_new_tokens": 24, "temperature": 0.0, "top_p": 1.0, "batch_size": 48}
    p = Params(model=ModelConfig(spec="tiny"), sim=sim, returns=ReturnsConfig(policies=["greedy", "k3"]),
               train=TrainConfig(data=str(tmp_path / "built"), out=str(tmp_path / "models"),
                                 workdir=str(tmp_path / "work"), batch_size=16, max_steps=1500, checkpoint_every=10 ** 6,
                                 lora=LoraConfig(enabled=False), deepspeed=adam(3e-3, 50)),
               eval=EvalConfig(out=str(tmp_path / "eval"), personas=PERSONAS, turns=TURNS, qa=False, generation=gen),
               mlflow=MlflowConfig(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db", artifacts=str(tmp_path / "art")))
    train(p, "greedy", progress=False)
    offline = evaluate(p, "greedy", log=False)["online"]
    p.train.deepspeed = adam(3e-4, 1, decay=False)
    p.online = OnlineConfig(domain="copy", personas_per_step=8, group=4, turns=TURNS, steps=20,
                            init=str(tmp_path / "models/greedy"),
                            generation={"max_new_tokens": 24, "temperature": 1.0, "top_p": 1.0, "batch_size": 32})
    train_online(p, "k3", progress=False)
    online = evaluate(p, "k3", run="k3-online", log=False)["online"]
    behaviour = behaviour_metrics(p)
    report = {name: {k: round(m[k]["mean"], 3) for k in ("consistency", "persona", "commitment", "coverage", "reward")}
              for name, m in (("behaviour", behaviour), ("offline_greedy", offline), ("online_k3", online))}
    print(json.dumps(report))
    b, o = behaviour, online
    # measured here: behaviour 0.767 (coverage 0.788), offline greedy 0.861 (0.964), online k3
    # 0.878 (0.964); the online stage adds little over its warm start at this scale (reward
    # 0.849 -> 0.866): most of the margin is offline PPG dropping the behaviour's zero-reward turns
    assert o["consistency"]["mean"] >= b["consistency"]["mean"] + 0.08, report
    assert o["consistency"]["lo"] > b["consistency"]["hi"], report  # the intervals do not overlap
    assert o["coverage"]["mean"] >= b["coverage"]["mean"], report
