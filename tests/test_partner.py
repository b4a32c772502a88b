"""The llm partner in its two forms: in this process with a KV cache carried across turns (its
greedy turns are those of re-encoding the whole chat every turn), and behind an OpenAI-compatible
endpoint over real HTTP: a scripted stub with injected failures (retried; a dialogue whose
partner keeps failing is dropped, counted, and left out of the gate's pairs), and `transformers
serve` (ppg serve-judge's server) as the partner."""

import dataclasses
import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import torch
from judge_server import send_json
from test_real_eval import patients, real  # noqa: F401  (the fixture: real personas, an LLM grader)

from ppg.rollout import Episode, GenerationConfig


class ScriptedPartner:
    """An OpenAI-compatible partner: the first line of each new chat is numbered ("chat N, line
    1"; N counts chats in arrival order), later lines name the chat again. The chats in `broken`
    fail with 500 from their second line on, always; chat `flaky`'s second line fails once (then
    the retry is answered)."""

    def __init__(self, broken: set[int], flaky: int):
        state = {"chats": 0, "requests": 0, "failed": 0, "bodies": []}
        lock = threading.Lock()

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with lock:
                    state["requests"] += 1
                    state["bodies"].append(body)
                    mine = [m["content"] for m in body["messages"] if m["role"] == "assistant"]
                    if not mine:
                        state["chats"] += 1
                        chat = state["chats"]
                    else:
                        chat = int(re.match(r"chat (\d+)", mine[0]).group(1))
                    fail = mine and (chat in broken or (chat == flaky and not state.get("flaked")))
                    if fail and chat == flaky:
                        state["flaked"] = True
                    state["failed"] += bool(fail)
                if fail:
                    self.send_response(500)
                    self.end_headers()
                    return
                send_json(self, {"model": body["model"], "choices": [{"index": 0, "finish_reason": "stop", "message": {
                    "role": "assistant", "content": f"chat {chat}, line {len(mine) + 1}: tell me more."}}]})

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.state = state
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"


def with_endpoint(p, url: str, **kw):
    ep = dataclasses.replace(p.eval.partner_endpoint, base_url=url, model="user-sim", retries=2, backoff_s=0.01,
                             timeout_s=10, **kw)
    return dataclasses.replace(p, eval=dataclasses.replace(p.eval, partner_model="", partner_endpoint=ep))


@pytest.fixture(scope="module")
def tiny(tiny_model):
    from transformers import AutoModelForCausalLM

    from ppg.models import load_tokenizer

    return AutoModelForCausalLM.from_pretrained(tiny_model).eval(), load_tokenizer(tiny_model)


def test_the_in_process_partner_carries_its_cache_and_says_what_reencoding_says(tiny):
    """Greedy partner turns from the carried cache equal transformers' generate over the whole
    chat, re-encoded as text every turn (the partner before the cache), dialogue by dialogue."""
    from ppg.partner import partner_chat
    from ppg.partner_models import InProcessPartner, partner_messages

    model, tok = tiny
    gen = GenerationConfig(max_new_tokens=5, temperature=0.0, batch_size=3)
    partner = InProcessPartner(model, tok, 3, gen, partner_chat)
    eps = [Episode(f"e{i}", i, "patient", f"I am patient {i}.", "therapist", "therapy") for i in range(3)]
    persona_says = ["I sleep badly.", "My sister calls on Sundays and we argue.", "Work."]
    reencoded = 0  # ids the re-encoding partner prefills: every chat whole, every turn
    for t in range(3):
        got = partner.reply(eps)
        for e, line in zip(eps, got):
            msgs = partner_messages(e, *partner_chat(e))
            ids = tok.apply_chat_template(msgs, add_generation_prompt=True, return_tensors="pt",
                                          return_dict=True)["input_ids"]
            reencoded += ids.shape[1]
            with torch.no_grad():
                ref = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=5, do_sample=False,
                                     pad_token_id=tok.pad_token_id)
            assert line == (tok.decode(ref[0, ids.shape[1]:], skip_special_tokens=True).strip() or "...")
            e.lines += [{"speaker": "therapist", "text": line},
                        {"speaker": "patient", "text": persona_says[(t + e.group) % 3]}]
    prefilled = partner.replier.prefilled
    assert partner.reply(eps) == [None] * 3  # three lines each, then the partner ends the dialogues
    assert partner.replier is None  # and lets go of the batch's cache
    assert prefilled < 0.6 * reencoded  # each turn's new text only


def test_real_persona_evaluation_with_the_partner_behind_an_endpoint(real, tiny_model):  # noqa: F811
    from transformers import AutoModelForCausalLM

    from ppg.evaluate.run import measure
    from ppg.gate import decide
    from ppg.models import load_tokenizer

    from pathlib import Path

    from ppg.data.schema import write_dialogues

    p, _ = real
    write_dialogues(Path(p.judge.out) / "dialogues.jsonl", patients(80))  # enough validation personas for 6
    stub = ScriptedPartner(broken={2}, flaky=3)
    p = with_endpoint(p, stub.url, max_drop_share=0.5)
    p = dataclasses.replace(p, eval=dataclasses.replace(p.eval, personas=6, turns=2, primary="online.persona"),
                            registry=dataclasses.replace(p.registry, min_pairs=3))
    model, tok = AutoModelForCausalLM.from_pretrained(tiny_model), load_tokenizer(tiny_model)
    metrics, dialogues, _ = measure(p, model, tok, "validation", "k2")
    online = metrics["online"]
    assert online["partner_identity"] == {"kind": "endpoint", "base_url": stub.url, "model": "user-sim"}
    drops = online["partner_drops"]
    assert drops["played"] == 6 and drops["dropped"] == 1 and drops["reasons"] == {"HTTP 500": 1}
    assert len(dialogues) == online["dialogues"] == online["persona"]["n"] == 5  # the drop is in no metric
    assert drops["ids"][0] not in {d.dialogue_id for d in dialogues}
    for d in dialogues:  # every kept dialogue is whole, its partner lines the stub's
        partner_lines = [ln.text for ln in d.lines if ln.speaker == "therapist"]
        assert len(partner_lines) == 2 and re.fullmatch(r"chat \d+, line 1: tell me more\.", partner_lines[0])
    # 6 first lines + the broken chat's 3 attempts + the flaky chat's failed one and its retry + 4 second lines
    assert stub.state["failed"] == 4 and stub.state["requests"] == 6 + 3 + 2 + 4
    assert {b["model"] for b in stub.state["bodies"]} == {"user-sim"}
    assert {b["max_tokens"] for b in stub.state["bodies"]} == {p.eval.generation["max_new_tokens"]}
    # a second model on the same personas: its broken chat is another persona, so 4 pairs remain
    other, _, _ = measure(p, model, tok, "validation", "k2")
    both = set(online["persona"]["per_unit"]) & set(other["online"]["persona"]["per_unit"])
    d = decide("online.persona", metrics, other, None, None, p.registry)
    lost = set(drops["ids"]) | set(other["online"]["partner_drops"]["ids"])
    assert d["difference"]["n"] == len(both) == 6 - len(lost)
    # an endpoint that is down drops more than max_drop_share: the evaluation fails, naming why
    down = ScriptedPartner(broken=set(range(1, 7)), flaky=0)
    with pytest.raises(RuntimeError, match=r"partner dropped \d of 6 dialogues, more than .*max_drop_share = 0.1"):
        measure(with_endpoint(p, down.url, max_drop_share=0.1), model, tok, "validation", "k2")


def test_the_partner_behind_transformers_serve(real, tiny_model):  # noqa: F811
    """Smoke: `transformers serve` (as ppg serve-judge runs it) plays the partner; nothing dropped."""
    from transformers import AutoModelForCausalLM

    from ppg.evaluate.run import measure
    from ppg.judges.serve import judge_server
    from ppg.models import load_tokenizer

    p, _ = real
    model, tok = AutoModelForCausalLM.from_pretrained(tiny_model), load_tokenizer(tiny_model)
    with judge_server(tiny_model, name="user-sim", device="cpu") as url:
        metrics, dialogues, _ = measure(with_endpoint(p, url), model, tok, "validation", "k2")
    assert metrics["online"]["partner_drops"]["dropped"] == 0 and len(dialogues) == 2
    assert all(len([ln for ln in d.lines if ln.speaker == "therapist"]) == 3 for d in dialogues)


def test_online_ppg_against_an_endpoint_partner_leaves_out_the_group_of_a_dropped_dialogue(real, tmp_path):  # noqa: F811
    """A dropped dialogue takes its whole group out of the step (the leave-one-out baseline needs
    every member); the step trains on the rest, and the partner is part of the run identity."""
    from ppg.config import LoraConfig, OnlineConfig, TrainConfig
    from ppg.train.online import online_identity, train_online

    p, _ = real
    stub = ScriptedPartner(broken={2}, flaky=0)
    p = dataclasses.replace(
        with_endpoint(p, stub.url, max_drop_share=0.5), judge=dataclasses.replace(p.judge, kind="llm"),
        eval=dataclasses.replace(with_endpoint(p, stub.url, max_drop_share=0.5).eval, judge={"model": "grader"}),
        train=TrainConfig(out=str(tmp_path / "models"), workdir=str(tmp_path / "work"), checkpoint_every=2,
                          lora=LoraConfig(enabled=True, r=4)),
        online=OnlineConfig(partner="llm", personas_per_step=2, group=2, turns=2, steps=1,
                            generation={"max_new_tokens": 5, "temperature": 1.0, "top_p": 1.0, "batch_size": 4}))
    r = train_online(p, "k2", progress=False)
    assert r["steps"] == 1 and r["history"][0]["dropped_dialogues"] == 1
    rollouts = [json.loads(x) for f in sorted((tmp_path / "work").rglob("rollouts/*.jsonl"))
                for x in f.read_text().splitlines()]
    assert len(rollouts) == 2 and len({d["personas"]["patient"] for d in rollouts}) == 1  # one whole group left
    ident = online_identity(p, "k2", tmp_path)
    assert ident["partner"] == {"kind": "endpoint", "base_url": stub.url, "model": "user-sim"}
    other = with_endpoint(p, stub.url.replace("/v1", "/v2"))
    assert online_identity(other, "k2", tmp_path)["partner"] != ident["partner"]
