"""The DeepSpeed PPG trainer on the tiny model (CPU, one process unless said otherwise)."""

import copy
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from reloads import assert_reloads_to_the_trained_model, final_logits
from safetensors.torch import load_file

from ppg.train.checkpoint import POINTER
from ppg.config import BuildConfig, LoraConfig, MlflowConfig, ModelConfig, Params, TrainConfig
from ppg.data.build import build_dataset
from ppg.data.importers import import_paths
from ppg.data.schema import DataError, write_dialogues

FIX = Path(__file__).parent / "fixtures"
POLICIES = ["greedy", "k2", "full", "segment"]
RANK_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


def built(tmp, tiny_model, zero_rewards=False, flip_rewards=False):
    ds, _ = import_paths("consistent-llms", [FIX / "consistent_llms_small.json"])
    for d in ds:
        for ln in d.lines:
            if ln.reward is not None and (zero_rewards or flip_rewards):
                ln.reward = 0.0 if zero_rewards else 1.0 - ln.reward
    write_dialogues(tmp / "imported/dialogues.jsonl", ds)
    build_dataset(tmp / "imported", tmp / "built", tiny_model, "tiny", POLICIES, {"length": 2},
                  BuildConfig(max_length=512, splits={"train": 1.0}))
    return tmp / "built"


@pytest.fixture(scope="module")
def data(tmp_path_factory, tiny_model):
    return built(tmp_path_factory.mktemp("data"), tiny_model)


def params(tmp, data, **train):
    ds = copy.deepcopy(TrainConfig().deepspeed)
    ds["optimizer"]["params"]["lr"] = train.pop("lr", 1e-3)
    ds["scheduler"] = {"type": "WarmupLR", "params": {"warmup_min_lr": ds["optimizer"]["params"]["lr"],
                                                       "warmup_max_lr": ds["optimizer"]["params"]["lr"],
                                                       "warmup_num_steps": 1}}
    ds["zero_optimization"]["stage"] = train.pop("zero", 0)
    ds["gradient_accumulation_steps"] = train.pop("accum", 1)
    cfg = dict(data=str(data), out=str(tmp / "models"), workdir=str(tmp / "work"), batch_size=2,
               max_steps=8, checkpoint_every=4, lora=LoraConfig(enabled=False), deepspeed=ds)
    cfg.update(train)
    return Params(model=ModelConfig(spec="tiny", base=""), train=TrainConfig(**cfg),
                  mlflow=MlflowConfig(tracking_uri=f"sqlite:///{tmp}/mlflow/mlflow.db",
                                      artifacts=str(tmp / "mlflow/artifacts")))


def run(p, policy="k2", **kw):
    from ppg.train.offline import train

    return train(p, policy, progress=False, **kw)


def weights_of(folder):
    return load_file(str(Path(folder) / ("adapter_model.safetensors" if (Path(folder) / "adapter_model.safetensors")
                                         .exists() else "model.safetensors")))


def test_loss_falls_and_every_parameter_changes_and_the_output_reloads_to_it(tmp_path, data, tiny_model,
                                                                            monkeypatch):
    seen = final_logits(monkeypatch)
    p = params(tmp_path, data, max_steps=40, lr=3e-3)
    r = run(p, "greedy")
    h = r["loss_history"]
    assert len(h) == 40 and sum(h[-8:]) / 8 < 0.5 * sum(h[:8]) / 8, h
    before, after = weights_of(tiny_model), weights_of(tmp_path / "models/greedy")
    assert set(before) == set(after)
    unchanged = [k for k in before if torch.equal(before[k], after[k])]
    assert unchanged == [], unchanged
    run_json = json.loads((tmp_path / "models/greedy/run.json").read_text())
    assert run_json["steps"] == 40 and run_json["mlflow_run_id"] == r["mlflow_run_id"]
    assert_reloads_to_the_trained_model(p, "greedy", seen, tmp_path)


def test_lora_changes_only_adapter_parameters_and_the_output_reloads_to_the_trained_model(tmp_path, data, tiny_model,
                                                                                         monkeypatch):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    seen = final_logits(monkeypatch)
    p = params(tmp_path, data, max_steps=6, lora=LoraConfig(enabled=True, r=4, target_modules=["q_proj", "v_proj"]))
    run(p, "full")
    assert_reloads_to_the_trained_model(p, "full", seen, tmp_path)
    adapters = weights_of(tmp_path / "models/full")
    assert adapters and all("lora_" in k for k in adapters)
    assert all(v.abs().sum() > 0 for k, v in adapters.items() if "lora_B" in k)  # B starts at zero
    merged = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model), tmp_path / "models/full")
    base = weights_of(tiny_model)
    for name, param in merged.base_model.model.named_parameters():
        if "lora_" not in name:
            key = name.replace("base_layer.", "")
            assert torch.equal(param.detach(), base[key]), name


def test_all_zero_weights_change_nothing(tmp_path, tiny_model):
    data0 = built(tmp_path, tiny_model, zero_rewards=True)
    run(params(tmp_path, data0, max_steps=4), "greedy")
    before, after = weights_of(tiny_model), weights_of(tmp_path / "models/greedy")
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_zero_stages_0_1_2_give_the_same_loss_trajectory(tmp_path, data):
    runs = {z: run(params(tmp_path / f"z{z}", data, zero=z, max_steps=6))["loss_history"] for z in (0, 1, 2)}
    for z in (1, 2):
        assert runs[z] == pytest.approx(runs[0], rel=1e-4), (z, runs)


def test_gradient_checkpointing_gives_the_same_loss_trajectory_and_weights(tmp_path, data):
    """train.gradient_checkpointing recomputes activations in the backward pass: the same updates."""
    runs = {gc: run(params(tmp_path / f"gc{gc}", data, max_steps=4, gradient_checkpointing=gc)) for gc in (False, True)}
    assert runs[True]["loss_history"] == pytest.approx(runs[False]["loss_history"], rel=1e-5)
    a, b = weights_of(tmp_path / "gcFalse/models/k2"), weights_of(tmp_path / "gcTrue/models/k2")
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)


def test_bad_inputs_are_clear_errors(tmp_path, data, tiny_model):
    from ppg.models import build_tiny

    with pytest.raises(DataError, match="field w_k7: the dataset has no weights for policy 'k7'"):
        run(params(tmp_path, data), "k7")
    other = build_tiny(tmp_path / "other-model", vocab_size=600)
    p = params(tmp_path, data)
    p.model.spec = str(other)
    with pytest.raises(DataError, match="field tokenizer_hash: built for tokenizer"):
        run(p, "k2")


def test_new_data_or_a_new_step_budget_retrains_in_a_new_run_and_a_rerun_resumes(tmp_path, tiny_model):
    """A finished checkpoint of other data is never a resume point: new data gives a new MLflow
    run and new weights; the same data and config again hands back the finished run untouched."""
    from mlflow import MlflowClient

    data1 = built(tmp_path / "d1", tiny_model)
    first = run(params(tmp_path, data1, max_steps=4), "k2")
    w1 = weights_of(tmp_path / "models/k2")
    again = run(params(tmp_path, data1, max_steps=4), "k2")  # same content: the finished checkpoint
    assert again["mlflow_run_id"] == first["mlflow_run_id"] and again["fingerprint"] == first["fingerprint"]
    data2 = built(tmp_path / "d2", tiny_model, flip_rewards=True)  # new content, same file names
    second = run(params(tmp_path, data2, max_steps=4), "k2")
    w2 = weights_of(tmp_path / "models/k2")
    assert second["mlflow_run_id"] != first["mlflow_run_id"] and second["fingerprint"] != first["fingerprint"]
    assert any(not torch.equal(w1[k], w2[k]) for k in w1)
    c = MlflowClient(f"sqlite:///{tmp_path}/mlflow/mlflow.db")
    assert max(m.step for m in c.get_metric_history(second["mlflow_run_id"], "loss")) == 4  # its own history
    longer = run(params(tmp_path, data2, max_steps=6), "k2")  # the step budget is part of the identity
    assert longer["mlflow_run_id"] != second["mlflow_run_id"] and longer["steps"] == 6
    assert [x.name for x in (tmp_path / "work/k2").iterdir()] == [longer["fingerprint"]]  # old folders removed


def cli_env(tmp):
    env = {k: v for k, v in os.environ.items() if k not in RANK_ENV}  # this process's rendezvous
    return {**env, "PATH": f"{Path(sys.executable).parent}:{env['PATH']}"}


def write_params(tmp, data, **train):
    tmp.mkdir(parents=True, exist_ok=True)
    p = params(tmp, data, **train)
    from dataclasses import asdict

    import yaml

    d = asdict(p)
    (tmp / "params.yaml").write_text(yaml.safe_dump({"model": d["model"], "train": d["train"], "mlflow": d["mlflow"]}))
    return tmp / "params.yaml"


@pytest.mark.slow
def test_kill_9_then_resume_equals_an_uninterrupted_run(tmp_path, data, monkeypatch):
    """Killed at a seeded checkpoint: the next pipeline run's reaper ends the orphaned MLflow run as
    KILLED (it looks alive otherwise), the rerun resumes into that same run and finishes it, with
    the weights of an uninterrupted run."""
    import random

    from mlflow import MlflowClient

    from ppg import tracking
    from ppg.config import MlflowConfig

    steps, kill_at = 300, random.Random(14).randrange(10, 60, 5)
    ref = write_params(tmp_path / "ref", data, max_steps=steps, checkpoint_every=5, lr=1e-4)
    subprocess.run(["ppg", "train", "--policy", "k2", "--params", str(ref), "--no-progress"], check=True,
                   env=cli_env(tmp_path), capture_output=True, cwd=tmp_path / "ref")
    cut = write_params(tmp_path / "cut", data, max_steps=steps, checkpoint_every=5, lr=1e-4)
    proc = subprocess.Popen(["ppg", "train", "--policy", "k2", "--params", str(cut), "--no-progress"],
                            env=cli_env(tmp_path), cwd=tmp_path / "cut", stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            pointer = next((tmp_path / "cut/work/k2").glob(f"*/{POINTER}"))  # the folder of its fingerprint
            if json.loads(pointer.read_text())["step"] >= kill_at:
                break
        except (OSError, ValueError, StopIteration):
            pass
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = json.loads(pointer.read_text())["step"]
    assert kill_at <= killed_at < steps, "the run must die mid-way"
    c = MlflowClient(f"sqlite:///{tmp_path / 'cut'}/mlflow/mlflow.db")
    exp = c.get_experiment_by_name("ppg").experiment_id
    [orphan] = c.search_runs([exp])
    assert orphan.info.status == "RUNNING" and orphan.data.tags["ppg.pid"] == str(proc.pid)
    cfg = MlflowConfig(tracking_uri=c.tracking_uri)
    monkeypatch.chdir(tmp_path)
    assert tracking.end_dead_runs(c, cfg) == []  # another workspace's runs are never touched
    monkeypatch.chdir(tmp_path / "cut")
    assert [r.info.run_id for r in tracking.end_dead_runs(c, cfg)] == [orphan.info.run_id]
    assert c.get_run(orphan.info.run_id).info.status == "KILLED"
    pointer.write_text(pointer.read_text()[:7])  # and a truncated pointer on top
    res = subprocess.run(["ppg", "train", "--policy", "k2", "--params", str(cut), "--no-progress"],
                         env=cli_env(tmp_path), capture_output=True, text=True, cwd=tmp_path / "cut")
    assert res.returncode == 0, res.stderr
    assert "is unusable" in res.stderr and "newest complete checkpoint" in res.stderr
    a, b = weights_of(tmp_path / "ref/models/k2"), weights_of(tmp_path / "cut/models/k2")
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-5), k
    runs = c.search_runs([exp])
    assert len(runs) == 1  # the resumed run continued the same MLflow run
    run_json = json.loads((tmp_path / "cut/models/k2/run.json").read_text())
    assert run_json["mlflow_run_id"] == runs[0].info.run_id and runs[0].info.status == "FINISHED"
    assert runs[0].data.tags["ppg.pid"] != str(proc.pid)  # owned by the process that finished it
    loss = c.get_metric_history(runs[0].info.run_id, "loss")
    assert max(m.step for m in loss) == steps
    assert tracking.end_dead_runs(c, cfg) == []  # nothing is left looking alive


def sgd(tmp, data, **train):
    """One plain SGD step (no clipping, constant lr): the update is the gradient itself, so equal
    updates mean equal gradients. (Adam's first step is about lr * sign(g) and would hide a scale.)"""
    p = params(tmp, data, zero=2, max_steps=1, bucket_batches=1, **train)
    p.train.deepspeed.update(optimizer={"type": "SGD", "params": {"lr": 0.5}}, gradient_clipping=0.0,
                             zero_allow_untested_optimizer=True)
    p.train.deepspeed.pop("scheduler")
    return p


@pytest.mark.slow
def test_one_step_is_the_same_update_as_one_batch_with_accumulation_or_two_ranks(tmp_path, data, tiny_model):
    """The fixture's 4 sequences hold 2, 3, 2 and 2 known turns: a loss divided by each micro-batch's
    own turns would weigh them unequally; divided by the step's turns, every split gives the update
    of one batch of 4 (1e-6 here; the turn sums and their order differ across the splits)."""
    from ppg.train.batching import known_turns, load_examples

    examples, _ = load_examples(data, "train", "k2")
    assert [known_turns([e]) for e in examples] == [2, 3, 2, 2]
    run(sgd(tmp_path / "big", data, batch_size=4))
    run(sgd(tmp_path / "accum", data, batch_size=2, accum=2))
    two = tmp_path / "two"
    two.mkdir()
    from dataclasses import asdict

    import yaml

    d = asdict(sgd(two, data, batch_size=2))
    (two / "params.yaml").write_text(yaml.safe_dump({"model": d["model"], "train": d["train"], "mlflow": d["mlflow"]}))
    env = {**cli_env(tmp_path), "DS_ACCELERATOR": "cpu"}
    res = subprocess.run(["deepspeed", "--num_gpus", "2", "--master_port", str(_port()),
                          str(Path(sys.executable).parent / "ppg"), "train", "--policy", "k2", "--params",
                          str(two / "params.yaml"), "--no-progress"], env=env, capture_output=True, text=True, cwd=two)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    start, big = weights_of(tiny_model), weights_of(tmp_path / "big/models/k2")
    moved = max(float((big[k] - start[k]).abs().max()) for k in big)
    assert moved > 1e-3  # the step did something to compare
    for other in ("accum", "two"):
        w = weights_of(tmp_path / other / "models/k2")
        worst = max(float((w[k] - big[k]).abs().max()) for k in big)
        assert worst < 1e-6, (other, worst, moved)


def _port():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_smollm2_with_lora_trains_and_the_merged_export_generates(tmp_path):
    from transformers import AutoModelForCausalLM

    from ppg.models import export_merged, load_tokenizer, resolve_model

    model_dir = resolve_model("smollm2-135m")
    ds, _ = import_paths("consistent-llms", [FIX / "consistent_llms_small.json"])
    write_dialogues(tmp_path / "imported/dialogues.jsonl", ds)
    build_dataset(tmp_path / "imported", tmp_path / "built", model_dir, "smollm2-135m", ["k2"], {"length": 2},
                  BuildConfig(max_length=512, splits={"train": 1.0}))
    p = params(tmp_path, tmp_path / "built", max_steps=2, lr=1e-4, lora=LoraConfig(enabled=True))
    p.model.spec = "smollm2-135m"
    r = run(p, "k2")
    assert r["steps"] == 2 and all(x == x for x in r["loss_history"])
    merged = export_merged(tmp_path / "models/k2", tmp_path / "merged")
    model = AutoModelForCausalLM.from_pretrained(merged)
    tok = load_tokenizer(merged)
    ids = tok.apply_chat_template([{"role": "system", "content": "You are Sam, a bus driver."},
                                   {"role": "user", "content": "What do you do for a living?"}],
                                  add_generation_prompt=True, return_tensors="pt", return_dict=True)
    out = model.generate(**ids, max_new_tokens=8, do_sample=False)
    text = tok.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True)
    assert len(text.strip()) > 0
    assert json.loads((merged / "run.json").read_text())["mlflow_run_id"] == r["mlflow_run_id"]


def test_disk_full_while_checkpointing_keeps_the_last_complete_checkpoint_usable(tmp_path, data, monkeypatch):
    """A writer that fails half-way (ENOSPC) during the step-8 checkpoint: the run fails, the
    step-4 checkpoint stays the resume point, and the resumed run ends where an uninterrupted one
    does, in the same MLflow run."""
    import errno

    import torch

    real_save, calls = torch.save, []

    def full_disk(obj, f, *a, **kw):
        calls.append(str(f))
        if "step-0000008" in str(f):
            Path(f).write_bytes(b"\0" * 10)  # a truncated shard, then the disk is full
            raise OSError(errno.ENOSPC, "No space left on device", str(f))
        return real_save(obj, f, *a, **kw)

    p = params(tmp_path, data)
    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(OSError, match="No space left"):
        run(p)
    monkeypatch.setattr(torch, "save", real_save)
    (work,) = (tmp_path / "work/k2").iterdir()  # the folder of the run's fingerprint
    assert json.loads((work / "latest.json").read_text())["tag"] == "step-0000004"
    assert not (work / "step-0000008/ppg-complete.json").exists()
    from ppg.train.checkpoint import find_resume

    assert find_resume(work, json.loads((work / "step-0000004/ppg-complete.json").read_text())["fingerprint"],
                       {})[1] == 4
    resumed = run(p)
    clean = run(params(tmp_path / "clean", data))
    assert resumed["steps"] == 8 and resumed["loss_history"] == pytest.approx(clean["loss_history"], abs=1e-6)
    from mlflow import MlflowClient

    c = MlflowClient(p.mlflow.tracking_uri)
    runs = c.search_runs([c.get_experiment_by_name(p.mlflow.experiment).experiment_id])
    assert [r.info.run_id for r in runs] == [resumed["mlflow_run_id"]]  # one run, continued
