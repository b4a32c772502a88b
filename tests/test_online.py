"""Online PPG mechanics on the tiny model (rollouts, judged rewards, LOO advantages, KL, resume)."""

import json
from pathlib import Path

import pytest

from reloads import assert_reloads_to_the_trained_model, final_logits

from ppg.config import LoraConfig, MlflowConfig, ModelConfig, OnlineConfig, Params, TrainConfig


def params(tmp, **online):
    oc = dict(personas_per_step=2, group=2, turns=3, steps=3, domain="chatting",
              generation={"max_new_tokens": 6, "temperature": 1.0, "top_p": 1.0, "batch_size": 4})
    oc.update(online)
    return Params(model=ModelConfig(spec="tiny", base=""),
                  train=TrainConfig(out=str(tmp / "models"), workdir=str(tmp / "work"), checkpoint_every=1,
                                    lora=LoraConfig(enabled=True, r=4)),
                  online=OnlineConfig(**oc),
                  mlflow=MlflowConfig(tracking_uri=f"sqlite:///{tmp}/mlflow.db", artifacts=str(tmp / "artifacts")))


def test_online_steps_judge_rollouts_and_start_at_zero_kl(tmp_path, tiny_model, monkeypatch):
    from ppg.train.online import train_online

    seen = final_logits(monkeypatch)
    r = train_online(params(tmp_path), "k2", progress=False)
    assert r["steps"] == 3 and len(r["history"]) == 3
    first = r["history"][0]
    assert first["kl"] == pytest.approx(0.0, abs=1e-7)  # the policy starts as its own reference
    assert all(0.0 <= h["reward"] <= 1.0 and h["turns"] + h["excluded_turns"] == 12 for h in r["history"])
    rollouts = sorted((Path(r["workdir"]) / "rollouts").glob("*.jsonl"))
    assert len(rollouts) == 3
    d = json.loads(rollouts[0].read_text().splitlines()[0])
    assert d["source"] == "simulator" and all(ln["reward"] is not None
                                              for ln in d["lines"] if ln["speaker"] == "persona")
    out = json.loads((tmp_path / "models/k2-online/run.json").read_text())
    assert out["mode"] == "online" and out["mlflow_run_id"] == r["mlflow_run_id"] and out["saved"] == "adapters"
    assert_reloads_to_the_trained_model(params(tmp_path), "k2-online", seen, tmp_path)
    # the online output is evaluated like any trained model
    from ppg.evaluate.run import evaluate

    p = params(tmp_path)
    p.eval.out, p.eval.personas, p.eval.turns, p.eval.qa = str(tmp_path / "eval"), 2, 3, False
    p.eval.generation = {"max_new_tokens": 4, "temperature": 0.0, "top_p": 1.0, "batch_size": 2}
    m = evaluate(p, "k2", run="k2-online")
    assert m["online"]["dialogues"] == 2 and (tmp_path / "eval/k2-online/metrics.json").exists()


def test_online_resume_continues_the_same_run(tmp_path, tiny_model):
    from ppg.train.online import train_online

    stopped = train_online(params(tmp_path), "greedy", progress=False, stop_after=2)
    assert stopped["stopped_at"] == 2
    done = train_online(params(tmp_path), "greedy", progress=False)
    assert done["steps"] == 3 and done["mlflow_run_id"] == stopped["mlflow_run_id"]
    assert len(done["history"]) == 3


def test_rollouts_train_on_the_sampled_ids_and_a_cut_reply_gets_no_end_target(tiny_model):
    """The training sequence is the context the policy saw, as ids: each reply is exactly the ids
    it sampled (its own end token included when it sampled one); a reply cut at max_new_tokens
    gets the template's end marker as context only."""
    import torch
    from transformers import AutoModelForCausalLM

    from ppg.config import SimConfig
    from ppg.models import load_tokenizer
    from ppg.rollout import GenerationConfig, play
    from ppg.sim.partner import sim_world

    tok = load_tokenizer(tiny_model)
    model = AutoModelForCausalLM.from_pretrained(tiny_model)
    eps, partner, judge = sim_world(SimConfig(), "chatting", 6, 1, 3, 5)
    end = tok.convert_tokens_to_ids("<|end|>")

    def likely_end(module, args, out):  # the random model rarely ends a reply: make its end token likely
        out[..., end] += 4.0
        return out

    for backend in ("cache", "generate"):
        gen = GenerationConfig(max_new_tokens=3, temperature=1.0, top_p=1.0, batch_size=6, backend=backend)
        seen = set()
        for force_end in (False, True):
            hook = model.lm_head.register_forward_hook(likely_end) if force_end else None
            _, rolls = play(model, tok, eps, partner, judge, gen, 5, with_tokens=True)
            if hook:
                hook.remove()
            for r in rolls:
                ids, ti = torch.tensor(r.input_ids), torch.tensor(r.turn_index)
                for t, was_ended in enumerate(r.ended):
                    reply = ids[ti == t].tolist()
                    assert 1 <= len(reply) <= 3 and (reply[-1] == end) == was_ended
                    after = (ti == t).nonzero().max().item() + 1
                    if after < len(ids):  # the end marker follows the reply once: sampled or as context
                        assert (ids[after].item() == end) != was_ended
                        assert ti[after].item() == -1
                    seen.add(was_ended)
        assert seen == {False, True}


def test_the_reference_is_the_starting_policy_merged_from_adapters_and_in_the_policys_dtype(tmp_path, tiny_model,
                                                                                           monkeypatch):
    import torch
    from peft import AutoPeftModelForCausalLM
    from transformers import AutoModelForCausalLM

    from ppg.models import load_model
    from ppg.train.online import start_policy, train_online

    warm = load_model(tiny_model, LoraConfig(enabled=True, r=4))
    for name, q in warm.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(q, std=0.5)  # adapters that move the policy
    warm.save_pretrained(tmp_path / "warm")
    p = params(tmp_path, init=str(tmp_path / "warm"))
    model = start_policy(p, tiny_model)
    ids = torch.tensor([[5, 17, 42, 99, 7]])
    with torch.no_grad(), model.disable_adapter():
        off = model(input_ids=ids).logits
    with torch.no_grad():
        start = AutoPeftModelForCausalLM.from_pretrained(tmp_path / "warm")(input_ids=ids).logits
        base = AutoModelForCausalLM.from_pretrained(tiny_model)(input_ids=ids).logits
        now = model(input_ids=ids).logits
    assert torch.allclose(off, start, atol=1e-5) and torch.allclose(now, start, atol=1e-5)  # fresh B = 0
    assert not torch.allclose(off, base, atol=1e-3)  # adapters off is the warm start, not the untrained base
    seen = final_logits(monkeypatch)
    r = train_online(p, "k2", progress=False)
    assert r["history"][0]["kl"] == pytest.approx(0.0, abs=1e-7)
    # the output keeps the warm start: adapters alone would reload onto the bare base model
    assert r["saved"] == "merged weights (warm start + online adapters)"
    assert_reloads_to_the_trained_model(p, "k2-online", seen, tmp_path)
    monkeypatch.undo()
    full = params(tmp_path / "bf16", steps=1)  # no LoRA, bf16: the reference in bf16 too
    full.train.lora = LoraConfig(enabled=False)
    full.train.deepspeed["bf16"] = {"enabled": True}
    assert train_online(full, "k2", progress=False)["history"][0]["kl"] == pytest.approx(0.0, abs=1e-7)


def test_online_training_runs_in_training_mode_and_logs_the_reward_of_judged_turns_only(tmp_path, tiny_model,
                                                                                          monkeypatch):
    """Without LoRA the model comes from from_pretrained in eval mode: the layers must still train
    in training mode (transformers checkpoints a layer only then). A turn the judge left without a
    verdict is unknown: the logged reward is the mean of the judged turns, never NaN."""
    import math

    import torch

    from ppg.train import online

    p = params(tmp_path, steps=2)
    p.train.lora, p.train.gradient_checkpointing = LoraConfig(enabled=False), True
    modes, score, batch_of = [], online.target_logprobs, online.turn_batch

    def spy_score(net, *a, **kw):
        if torch.is_grad_enabled():  # the policy's pass (the reference's runs under no_grad)
            layers = [m for m in net.modules() if hasattr(m, "gradient_checkpointing")]
            modes.append(net.training and bool(layers) and all(m.training and m.gradient_checkpointing for m in layers))
        return score(net, *a, **kw)

    def one_unjudged(dialogues, segments):
        batch = batch_of(dialogues, segments)
        batch.rewards[0, 0] = float("nan")
        return batch

    monkeypatch.setattr(online, "target_logprobs", spy_score)
    monkeypatch.setattr(online, "turn_batch", one_unjudged)
    seen = final_logits(monkeypatch)
    r = online.train_online(p, "k2", progress=False)
    assert modes == [True, True]
    assert all(h["unjudged_turns"] == 1 and not math.isnan(h["reward"]) for h in r["history"])
    for step, h in enumerate(r["history"], 1):  # the mean of every judged turn but the one left unjudged
        saved = Path(r["workdir"]) / f"rollouts/step-{step:07d}.jsonl"
        dialogues = [json.loads(x) for x in saved.read_text().splitlines()]
        judged = [ln["reward"] for i, d in enumerate(dialogues)
                  for t, ln in enumerate(x for x in d["lines"] if x["speaker"] == d["evaluated_speakers"][0])
                  if (i, t) != (0, 0)]
        assert h["reward"] == pytest.approx(sum(judged) / len(judged), abs=1e-6)
    assert r["saved"] == "weights"
    assert_reloads_to_the_trained_model(p, "k2-online", seen, tmp_path)


def test_online_training_refuses_what_it_cannot_do_right(tmp_path):
    from ppg.train.online import refuse_off_policy

    with pytest.raises(ValueError, match="bc's weights are all 1, so online.baseline 'group_loo'"):
        refuse_off_policy(params(tmp_path), "bc", "bc")
    refuse_off_policy(params(tmp_path, baseline="none"), "bc", "bc")  # nothing zeroes its weights
    warped = {"max_new_tokens": 6, "temperature": 0.7, "top_p": 1.0, "batch_size": 4}
    with pytest.raises(ValueError, match="temperature and top_p must be 1"):
        refuse_off_policy(params(tmp_path, generation=warped), "k2", "k2")
    with pytest.raises(ValueError, match="online.baseline: expected"):
        OnlineConfig(baseline="turn_kind")


def test_online_config_errors():
    with pytest.raises(ValueError, match="online.group"):
        OnlineConfig(group=1)
    assert OnlineConfig(group=1, baseline="none").group == 1  # only the leave-one-out baseline needs a group
    with pytest.raises(ValueError, match="online.kl_estimator"):
        OnlineConfig(kl_estimator="k4")


def test_the_online_loss_climbs_a_bandit_reward(tiny_model):
    """REINFORCE mechanics end to end (sampling, re-scoring, online_ppg_loss, AdamW): reward = 1
    when the first sampled token is in a fixed half of the vocabulary; it must go to ~1."""
    import copy

    import numpy as np
    import torch
    from transformers import AutoModelForCausalLM

    from ppg.train.batching import Example, collate
    from ppg.losses import online_ppg_loss, token_logprobs
    from ppg.models import load_tokenizer

    torch.manual_seed(0)
    tok = load_tokenizer(tiny_model)
    model = AutoModelForCausalLM.from_pretrained(tiny_model)
    ref = copy.deepcopy(model).eval()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    prompt = tok([tok.apply_chat_template([{"role": "user", "content": "Say something."}], add_generation_prompt=True,
                                          tokenize=False)] * 32, return_tensors="pt", add_special_tokens=False)
    n0 = prompt["input_ids"].shape[1]
    good = torch.zeros(len(tok), dtype=torch.bool)
    good[::2] = True
    rates = []
    for _ in range(12):
        with torch.no_grad():
            out = model.generate(**prompt, max_new_tokens=3, do_sample=True, temperature=1.0, top_p=1.0,
                                 pad_token_id=tok.pad_token_id)
        r = good[out[:, n0]].float()
        rates.append(r.mean().item())
        adv = (r - r.mean()).numpy()
        ex = [Example(o.numpy(), np.array([-1] * n0 + [0] * (len(o) - n0)), np.array([a])) for o, a in zip(out, adv)]
        b = collate(ex, tok.pad_token_id)
        logp = token_logprobs(model(input_ids=b["input_ids"]).logits, b["input_ids"])
        with torch.no_grad():
            ref_logp = token_logprobs(ref(input_ids=b["input_ids"]).logits, b["input_ids"])
        loss = online_ppg_loss(logp, ref_logp, b["turn_index"], b["weights"], kl_coef=0.0).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert rates[0] < 0.75 and min(rates[-3:]) > 0.9, rates


def test_a_backend_with_its_own_weights_follows_every_update_through_load_weights(tmp_path, tiny_model,
                                                                                    monkeypatch):
    """Online training tells its sampling backend of new weights after every step: a backend that
    keeps its own copy of the policy (as a server would) and learns of updates only through
    load_weights samples every batch from the weights the policy has then; one that ignores
    load_weights samples from the starting policy after the first update."""
    import copy

    from ppg.generation import BACKENDS, InProcess
    from ppg.train import online

    seen = []  # per batch: largest difference between the backend's weights and the live policy's

    class OwnCopy(InProcess):
        synced = True

        def __init__(self, replier, model, tok, gen):
            super().__init__(replier, copy.deepcopy(model).eval(), tok, gen)
            self.live = model

        def batch(self, n):
            live = dict(self.live.named_parameters())
            seen.append(max((p.detach() - live[k].detach()).abs().max().item()
                            for k, p in self.model.named_parameters()))
            return super().batch(n)

        def load_weights(self, model):
            if self.synced:
                self.model.load_state_dict(model.state_dict())

    def run(folder):
        seen.clear()
        with monkeypatch.context() as m:
            m.setattr(online, "backend", lambda gen, tok, model: OwnCopy(BACKENDS[gen.backend], model, tok, gen))
            online.train_online(params(tmp_path / folder, baseline="none"), "k2", progress=False)
        return list(seen)

    synced = run("synced")
    assert len(synced) == 3 and max(synced) == 0.0  # every step's rollouts: the policy as it is then
    OwnCopy.synced = False
    stale = run("stale")
    assert stale[0] == 0.0 and min(stale[1:]) > 0.0  # the starting weights after the first update
