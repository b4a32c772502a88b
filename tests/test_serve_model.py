"""`ppg serve-model` for OpenAI clients, over real HTTP with the `openai` client: a registered
chat model (tiny, random) answers a two-turn chat with a persona; concurrent chats at
temperature 0 and 1.5 decode together, the greedy ones giving the greedy answer and the sampled
ones their own; bad requests are answered 4xx and the server stays up; a max_tokens above the cap
is refused; no admin route exists; the request log feeds the monitor."""

import concurrent.futures
import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import torch

from ppg.config import DataConfig, JudgeConfig, MlflowConfig, MonitorConfig, Params

BIN = Path(sys.executable).parent
PERSONA = "I am Maya, 34, a nurse in Leeds. I work night shifts."


@pytest.fixture(scope="module")
def model_dir(tiny_model, tmp_path_factory):
    """The tiny random model with its weights shaken (seeded): unshaken, its greedy reply to any
    chat is its assistant marker again and again, which decodes to "" and would make every
    greedy comparison pass."""
    from transformers import AutoModelForCausalLM

    from ppg.models import load_tokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_model)
    torch.manual_seed(0)
    with torch.no_grad():
        for name, w in model.named_parameters():
            if "norm" not in name:
                w.add_(torch.randn_like(w) * 0.05)
    out = tmp_path_factory.mktemp("shaken")
    model.save_pretrained(out)
    load_tokenizer(tiny_model).save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def served(model_dir, tmp_path_factory):
    """(openai client, params, request log folder, server output) of `ppg serve-model` on a
    registered version of the tiny model, capped at 8 tokens."""
    import mlflow
    import openai
    import yaml

    from ppg.io import free_port
    from ppg.judges.serve import wait_healthy
    from ppg.tracking import client, experiment_id
    from ppg.registry import fluent, log_chat_model

    tmp = tmp_path_factory.mktemp("serve")
    p = Params(data=DataConfig(source=f"jsonl:{tmp / 'incoming'}"), judge=JudgeConfig(),
               monitor=MonitorConfig(incoming=str(tmp / "incoming"), state=str(tmp / "state"), min_turns=1),
               mlflow=MlflowConfig(tracking_uri=f"sqlite:///{tmp}/mlflow.db", artifacts=str(tmp / "artifacts")))
    with fluent(p), mlflow.start_run(experiment_id=experiment_id(client(p.mlflow), p.mlflow)), pytest.warns() as caught:
        log_chat_model(mlflow, model_dir, "ppg-therapy", 6, "therapy")
    assert not [w for w in caught if issubclass(w.category, FutureWarning)]  # no deprecated interface
    mlflow.MlflowClient(p.mlflow.tracking_uri).set_registered_model_alias("ppg-therapy", "champion", "1")
    (tmp / "params.yaml").write_text(yaml.safe_dump({"mlflow": {"tracking_uri": p.mlflow.tracking_uri,
                                                                "artifacts": p.mlflow.artifacts}}))
    port, logs = free_port(), tmp / "requests"
    out = tmp / "server.log"
    with out.open("w") as f:
        proc = subprocess.Popen([str(BIN / "ppg"), "serve-model", "--model", "ppg-therapy", "--port", str(port),
                                 "--request-log", str(logs), "--max-tokens-cap", "8", "--params",
                                 str(tmp / "params.yaml")], stdout=f, stderr=subprocess.STDOUT,
                                start_new_session=True)
    try:
        wait_healthy(proc, f"http://127.0.0.1:{port}", 120, out.read_text)
        yield openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused", max_retries=0), p, logs, out
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)


def greedy_reference(folder, msgs, n):
    from transformers import AutoModelForCausalLM

    from ppg.models import load_tokenizer

    model, tok = AutoModelForCausalLM.from_pretrained(folder).eval(), load_tokenizer(folder)
    ids = tok.apply_chat_template(msgs, add_generation_prompt=True, return_tensors="pt", return_dict=True)["input_ids"]
    with torch.no_grad():
        out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, do_sample=False,
                             pad_token_id=tok.pad_token_id)
    return tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True).strip()


def test_a_two_turn_chat_and_concurrent_chats_with_their_own_sampling(served, model_dir):
    client, _, _, _ = served
    assert [m.id for m in client.models.list().data] == ["ppg-therapy"]
    chat = [{"role": "system", "content": PERSONA}, {"role": "user", "content": "Where do you work?"}]
    first = client.chat.completions.create(model="ppg-therapy", messages=chat, temperature=0)
    assert first.choices[0].message.content == greedy_reference(model_dir, chat, 6)  # the logged default budget
    assert first.usage.completion_tokens <= 6 and first.system_fingerprint == "ppg-therapy/1"
    chat += [{"role": "assistant", "content": first.choices[0].message.content},
             {"role": "user", "content": "And at night?"}]
    second = client.chat.completions.create(model="ppg-therapy", messages=chat, temperature=0, max_tokens=4)
    assert second.choices[0].message.content == greedy_reference(model_dir, chat, 4)
    assert second.usage.completion_tokens <= 4

    def ask(temperature, seed):
        r = client.chat.completions.create(model="ppg-therapy", messages=chat[:2], temperature=temperature,
                                           seed=seed, max_tokens=8)
        return temperature, seed, r.choices[0].message.content

    with concurrent.futures.ThreadPoolExecutor(8) as pool:  # decoded together, each with its own sampling
        got = list(pool.map(lambda a: ask(*a), [(0.0, s) for s in range(3)] + [(1.5, s) for s in range(5)]))
    greedy = greedy_reference(model_dir, chat[:2], 8)
    assert greedy  # a reply that decodes to text
    assert [text for t, _, text in got if t == 0.0] == [greedy] * 3
    sampled = [text for t, _, text in got if t == 1.5]
    assert len(set(sampled)) > 1 and greedy not in sampled  # 5 draws at 1.5 over a random model's vocabulary
    assert ask(1.5, 3)[2] == sampled[3]  # a seed gives its draw again, whatever else is decoded beside it


def test_bad_requests_are_answered_4xx_and_the_server_stays_up(served):
    import openai

    client, _, _, _ = served
    url = str(client.base_url).rstrip("/")
    persona = [{"role": "system", "content": PERSONA}, {"role": "user", "content": "hi"}]
    bad = {"messages missing": ({"model": "ppg-therapy"}, 400, "messages: required"),
           "a tool role": ({"messages": [{"role": "tool", "content": "x"}]}, 400, "messages[0].role: 'tool'"),
           "negative max_tokens": ({"messages": persona, "max_tokens": -1}, 400, "max_tokens: expected a positive"),
           "above the cap": ({"messages": persona, "max_tokens": 10 ** 9}, 400, "above this server's cap of 8"),
           "temperature -1": ({"messages": persona, "temperature": -1.0}, 400, "temperature: expected a number"),
           "another model": ({"model": "gpt-4o", "messages": persona}, 404, "'gpt-4o' is not served here"),
           "streaming": ({"messages": persona, "stream": True}, 400, "streaming is not supported"),
           "2 MB message": ({"messages": [{"role": "user", "content": "x" * 2_000_000}]}, 413, "over this server"),
           "not JSON": (b"{", 400, "not JSON"),
           "nested past the parser": (b"[" * 200_000, 400, "nested too deeply"),
           "a model that is not a name": ({"model": ["x"], "messages": persona}, 400, "model: expected a string"),
           "a seed torch cannot take": ({"messages": persona, "seed": 2 ** 64}, 400, "seed: expected an integer")}
    for case, (body, status, says) in bad.items():
        r = httpx.post(f"{url}/chat/completions", timeout=30, **({"content": body} if isinstance(body, bytes)
                                                                 else {"json": body}))
        assert (r.status_code, says in r.json()["error"]["message"]) == (status, True), (case, r.text)
    with pytest.raises(openai.BadRequestError, match="above this server's cap of 8 tokens"):
        client.chat.completions.create(model="ppg-therapy", messages=persona, max_tokens=9)
    for route in ("/load_model", "/reset", "/v1/load_model"):  # transformers serve's unauthenticated admin routes
        assert httpx.post(url.removesuffix("/v1") + route, json={}, timeout=10).status_code == 404
    assert client.chat.completions.create(model="ppg-therapy", messages=persona, max_tokens=2).choices
    # a temperature so small that dividing by it overflows decodes greedily (it was a 500 for the whole batch)
    tiny_t = client.chat.completions.create(model="ppg-therapy", messages=persona, max_tokens=4, temperature=1e-40)
    greedy = client.chat.completions.create(model="ppg-therapy", messages=persona, max_tokens=4, temperature=0)
    assert tiny_t.choices[0].message.content == greedy.choices[0].message.content


def test_the_request_log_feeds_the_monitor(served):
    from ppg.data.schema import read_dialogues
    from ppg.monitor import check

    client, p, logs, out = served
    client.chat.completions.create(model="ppg-therapy", messages=[{"role": "system", "content": PERSONA},
                                                                  {"role": "user", "content": "hello"}], max_tokens=3)
    records = [d for f in sorted(logs.glob("requests-*.jsonl")) for d in read_dialogues(f)]
    assert records and {d.meta["model_version"] for d in records} == {"ppg-therapy/1"}
    assert all(d.personas["assistant"] == PERSONA for d in records if d.personas["assistant"])
    r = check(p, logs)
    assert r["versions"]["ppg-therapy/1"]["score"]["turns"] >= 1
    assert PERSONA not in out.read_text()  # the server's own output names no conversation


def test_a_chat_beyond_the_models_context_is_refused_not_run(model_dir):
    """Positions past max_position_embeddings were never trained (and past the rotary tables, an
    error): a chat whose tokens and max_tokens exceed the context is a 400, whatever the server's
    prompt bound."""
    from fastapi.testclient import TestClient
    from transformers import AutoModelForCausalLM

    from ppg.models import load_tokenizer
    from ppg.serving.server import Limits, make_app

    model, tok = AutoModelForCausalLM.from_pretrained(model_dir).eval(), load_tokenizer(model_dir)
    app = make_app(model, tok, "ppg-therapy", "1", "therapy", Limits(max_prompt_tokens=10 ** 6, max_tokens_cap=8))
    try:
        with TestClient(app) as c:
            long = {"messages": [{"role": "user", "content": "x y " * 5000}], "max_tokens": 8}
            r = c.post("/v1/chat/completions", json=long)
            assert r.status_code == 400 and "exceed the model's context of 4096 tokens" in r.json()["error"]["message"]
            r = c.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2})
            assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] <= 2
    finally:
        app.state.engine.close()
