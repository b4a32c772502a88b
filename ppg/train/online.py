"""Online PPG: the policy plays personas against a partner (online.partner: the simulator with its
exact judge, or real training personas against a partner model judged by judge.kind;
ppg.partner.RolloutWorld), every turn is judged, and REINFORCE with partial-return advantages and
a KL penalty to the frozen starting policy updates it.

    A_t = w_t - b_t     w_t = partial return of the policy class over the judged rollout
                        b_t = mean w_t of the OTHER rollouts of the same persona (group LOO)
    loss = -(1/N) sum_t A_t log pi(a_t | x_t) + beta KL penalty (ppg.losses.kl_penalty)

log pi(a_t | x_t) is scored on the ids the policy SAMPLED, in the context it saw them in
(ppg.rollout keeps both as token ids): a reply cut at max_new_tokens has no end-of-turn target.
The reference is the starting policy: with LoRA the same model with its adapters switched off
(a warm start from adapters is merged into the base first, and fresh adapters train on top);
without LoRA a frozen copy in the policy's own dtype, so the KL is 0 at step 0 either way.
Same DeepSpeed engine, checkpoints, resume and MLflow handling as offline training
(ppg.train.run.TrainingRun). Rollouts are saved as canonical dialogues in the working folder.
"""

import copy
import json
import time
from dataclasses import asdict
from pathlib import Path

import torch

from ppg.data.schema import write_dialogues
from ppg.data.turns import turn_batch
from ppg.io import content_hash
from ppg.judges.base import verdict_rates
from ppg.losses import online_ppg_loss, target_logprobs
from ppg.models import base_model, load_tokenizer, tokenizer_hash, with_lora
from ppg.returns import POLICIES, parse_policy_id, partial_returns, shape_weights
from ppg.generation import backend
from ppg.rollout import GenerationConfig, play, rollout_arrays
from ppg.partner import RolloutWorld, partner_identity
from ppg.partner_models import check_drops
from ppg.train import engine as eng
from ppg.train.run import TrainingRun
from ppg.train.batching import Example, collate


def start_policy(p, model_dir):
    """The starting policy: the base model or an offline PPG output (online.init, merged when it
    holds adapters), with fresh LoRA adapters when train.lora is on."""
    from transformers import AutoModelForCausalLM

    init = Path(p.online.init) if p.online.init else None
    if init is None:
        start = AutoModelForCausalLM.from_pretrained(str(model_dir))
    elif (init / "adapter_config.json").exists():
        from peft import PeftModel

        base = AutoModelForCausalLM.from_pretrained(str(model_dir))
        start = PeftModel.from_pretrained(base, str(init)).merge_and_unload()
    else:
        start = AutoModelForCausalLM.from_pretrained(str(init))
    return with_lora(start, p.train.lora)


def reference_logprobs(engine, ref, lora: bool, b) -> torch.Tensor:
    """The starting policy's token log-probs on the batch: adapters off (LoRA) or the frozen copy."""
    from contextlib import nullcontext

    net = engine.module if lora else ref
    training = net.training
    net.eval()  # the reference has no dropout, whatever mode the policy trains in
    try:
        with torch.no_grad(), (engine.module.disable_adapter() if lora else nullcontext()):
            return target_logprobs(net, b["input_ids"], b["attention_mask"], b["turn_index"])
    finally:
        net.train(training)


def refuse_off_policy(p, kind: str, policy: str) -> None:
    """What online training cannot do right, refused before anything loads: a warped sampler (the
    REINFORCE gradient assumes replies drawn from the policy it scores), and bc with a baseline
    (its all-ones weights become zero advantages: it would train the KL term alone)."""
    from ppg.returns import shaping_zeroes_bc
    from ppg.rollout import GenerationConfig

    gen = GenerationConfig(**p.online.generation)
    if gen.temperature != 1.0 or gen.top_p != 1.0:
        raise ValueError(f"online.generation: online PPG samples the replies it scores, so temperature and top_p must "
                         f"be 1 (got temperature {gen.temperature}, top_p {gen.top_p}); other settings make the "
                         f"policy gradient off-policy")
    if kind == "bc" and shaping_zeroes_bc(p.online.baseline, p.returns.standardize):
        raise ValueError(f"online {policy}: bc's weights are all 1, so online.baseline {p.online.baseline!r}"
                         f"{' and returns.standardize' if p.returns.standardize else ''} turn every one into 0 "
                         f"and only the KL term would train; set online.baseline: none (and returns.standardize: "
                         f"false), or train a policy class that credits rewards")


def online_identity(p, policy: str, model_dir: Path) -> dict:
    """What an online run's result depends on (ppg.train.offline.run_identity's rule): the base
    model's and the warm start's content, not their paths, and every knob including the step
    budget; with real personas also who plays them, who judges and the personas' content."""
    cfg, oc = p.train, p.online
    ident = {"mode": "online", "model": p.model.spec, "base_model": content_hash(model_dir), "code": eng.code_hash(),
             "policy": policy, "init": content_hash(oc.init, skip=("run.json",)) if oc.init else None,
             "online": asdict(oc), "sim": asdict(p.sim), "lora": asdict(cfg.lora), "deepspeed": cfg.deepspeed,
             "seed": cfg.seed, "reduction": cfg.reduction,
             "returns": {k2: getattr(p.returns, k2) for k2 in ("segments", "standardize", "clip", "gamma")}}
    if oc.partner == "llm":
        ident.update(partner=partner_identity(p), judge=asdict(p.judge), build=asdict(p.build),
                     personas=content_hash(Path(p.judge.out) / "dialogues.jsonl"))
    return ident


def train_online(p, policy: str, progress: bool = True, stop_after: int | None = None) -> dict:
    """Online PPG for one policy class (ppg.config.Params p; module doc). Resumes from the working
    folder of its run identity; writes train.out/<policy>-online, which reloads to the trained
    model (a LoRA warm start is merged into the saved weights, not lost). stop_after=N exits
    after N steps (tests of resume)."""
    kind, k = parse_policy_id(policy)
    cfg, oc, name = p.train, p.online, f"{policy}-online"
    domain = oc.domain or p.sim.domain
    if oc.partner == "simulator" and domain not in p.sim.domains:
        raise ValueError(f"online.domain: {domain!r} is not one of {sorted(p.sim.domains)}")
    refuse_off_policy(p, kind, policy)
    model_dir = base_model(p)
    deepspeed, _, _ = eng.setup_distributed(one_rank="online training runs on one rank (rollouts are generated "
                                                      "in process)")
    run = TrainingRun(name, online_identity(p, policy, model_dir), cfg, oc.steps, {}, cfg.seed, stop_after=stop_after)
    model = start_policy(p, model_dir)
    lora = cfg.lora.enabled
    ref = None if lora else copy.deepcopy(model).eval().requires_grad_(False)
    config = eng.ds_config(dict(cfg.deepspeed, gradient_accumulation_steps=1), oc.personas_per_step * oc.group,
                           1, oc.steps)
    engine = run.start(deepspeed, model, config, cfg.gradient_checkpointing)
    if ref is not None:  # every tensor in the dtype DeepSpeed gave the policy's (bf16 weights, fp32
        ref.to(engine.device)  # rotary buffers): anything else would not start at KL 0
        for a, b in zip([*ref.parameters(), *ref.buffers()], [*engine.module.parameters(), *engine.module.buffers()]):
            a.data = a.data.to(b.dtype)
    tok = load_tokenizer(model_dir)
    run.track(p.mlflow, progress=progress,
              tags={"ppg.stage": "train", "ppg.mode": "online", "ppg.policy": policy, "ppg.policy_class": kind,
                    "ppg.k": str(k or "")},
              params={"policy": policy, "mode": "online", "model": p.model.spec, "domain": domain,
                      **{f"online.{k2}": v for k2, v in asdict(oc).items()}},
              inputs={"base_model": str(model_dir), **({"warm_start": oc.init} if oc.init else {}),
                      **({"personas": str(Path(p.judge.out) / "dialogues.jsonl")} if oc.partner == "llm" else {})})
    gen = GenerationConfig(**oc.generation)
    world = RolloutWorld(p, oc.partner, p.train.split, gen,  # partner and judge loaded once
                         domain if oc.partner == "simulator" else oc.domain, oc.turns)
    replies = backend(gen, tok, engine.module)  # the policy's sampler, told of every update
    while run.state["step"] < oc.steps:
        last, dialogues = online_step(p, run, world, gen, replies, tok, ref, kind, k)
        run.state["history"].append(last)
        write_dialogues(run.workdir / "rollouts" / f"step-{run.state['step'] + 1:07d}.jsonl", dialogues)
        if run.step_done(last, reward="-" if last["reward"] is None else f"{last['reward']:.3f}",
                         kl=f"{last['kl']:.4f}"):
            return run.stopped()
    # a warm start is folded into the starting weights under fresh adapters: adapters alone would
    # reload onto the bare base model, without it, so the merged weights are saved instead
    merge = lora and bool(oc.init)
    result = {"policy": policy, "mode": "online", **run.record(), "model_spec": p.model.spec,
              "tokenizer_hash": tokenizer_hash(model_dir), "history": run.state["history"], "init": oc.init,
              "reward_judge": world.judge.identity() if oc.partner == "llm" else None,  # evaluation grades apart
              "saved": ("merged weights (warm start + online adapters)" if merge else
                        "adapters" if lora else "weights")}
    run.finish(tok, Path(cfg.out) / name, result, merge=merge)
    return json.loads(json.dumps(result, default=str))


def online_step(p, run, world, gen, replies, tok, ref, kind: str, k: int | None) -> tuple[dict, list]:
    """One REINFORCE step: draw personas, play and judge the rollouts, credit each turn with its
    policy class's partial return less the baseline, update. (the step's metrics, its dialogues)"""
    oc, engine, t0 = p.online, run.engine, time.perf_counter()
    step_seed = p.train.seed * 100_003 + run.state["step"]
    eps, partner, judge = world.draw(step_seed, oc.personas_per_step, oc.group)
    stats = {}
    dialogues, rollouts = play(engine.module, tok, eps, partner, judge, gen, step_seed, with_tokens=True,
                               replies=replies, stats=stats)
    drops = check_drops(stats["dropped"], len(eps), p.eval.partner_endpoint, f"online step {run.state['step'] + 1}")
    if drops["dropped"]:  # the group baseline needs every member of a group: a group with a drop goes
        by_id = {e.dialogue_id: e for e in eps}
        out = {by_id[i].group for i in stats["dropped"]}
        keep = [i for i, d in enumerate(dialogues) if by_id[d.dialogue_id].group not in out]
        dialogues, rollouts = [dialogues[i] for i in keep], [rollouts[i] for i in keep]
        eps = [by_id[d.dialogue_id] for d in dialogues]
    if not dialogues:
        raise RuntimeError(f"online step {run.state['step'] + 1}: every group lost a dialogue to the partner "
                           f"({drops['reasons']})")
    # one row per rollout (each has one evaluated speaker); segment starts only where the class reads them
    batch = turn_batch(dialogues, p.returns.segments if POLICIES[kind].segments else {"length": 1})
    r, mask = batch.rewards, batch.mask
    w = partial_returns(r, mask, kind, k=k, segments=batch.segment_starts, gamma=p.returns.gamma)
    adv = shape_weights(w, mask, oc.baseline, p.returns.standardize, torch.tensor([e.group for e in eps]),
                        clip=p.returns.clip)
    b = collate([Example(*rollout_arrays(ro), adv[i].numpy()) for i, ro in enumerate(rollouts)], tok.pad_token_id)
    b = {key: v.to(engine.device) if torch.is_tensor(v) else v for key, v in b.items()}
    logp = target_logprobs(engine.module, b["input_ids"], b["attention_mask"], b["turn_index"])
    ref_logp = reference_logprobs(engine, ref, p.train.lora.enabled, b)
    out = online_ppg_loss(logp, ref_logp, b["turn_index"], b["weights"], oc.kl_coef, oc.kl_estimator,
                          p.train.reduction)
    engine.backward(out.loss)
    norm = eng.grad_norm(engine)
    engine.step()
    replies.load_weights(engine.module)  # the next rollouts sample the updated policy
    rates = verdict_rates([ln for d in dialogues for ln in d.turns(d.evaluated_speakers[0])])
    judged = r[mask][~torch.isnan(r[mask])]  # a turn without a verdict is unknown, not 0 or NaN
    last = {"loss": out.loss.item(), "kl": out.kl.item(), "reward": float(judged.mean()) if len(judged) else None,
            "unjudged_turns": int(mask.sum()) - len(judged), "consistency": rates["consistency"],
            "coverage": rates["coverage"], "grad_norm": norm, "turns": out.turns, "excluded_turns": out.excluded,
            "seconds": time.perf_counter() - t0, "cut_replies": sum(not e for ro in rollouts for e in ro.ended),
            "dropped_dialogues": drops["dropped"]}
    return last, dialogues
