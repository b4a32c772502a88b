"""What the LLM judge does with answers it cannot trust, over real HTTP against a scripted
endpoint: each case is refused (a one-line JudgeError), or unknown and counted by reason, or
accepted as written. Never a traceback, a hang, a leaked key or a wrong 0/1."""

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from ppg.config import JudgeConfig
from ppg.data.schema import Dialogue
from ppg.judges.base import both_hold
from ppg.judges.cache import VerdictCache
from ppg.judges.llm import JudgeError, LLMJudge

SECRET = "sk-test-DO-NOT-LEAK-0987654321"


def dialogue():
    """Patient lines at indices 1 and 3: the line-to-line question of line 3 shows line 1 only."""
    return Dialogue.model_validate({
        "dialogue_id": "d1", "domain": "therapy", "source": "test",
        "personas": {"patient": "I am Sam, a bus driver.", "therapist": ""}, "evaluated_speakers": ["patient"],
        "lines": [{"speaker": "therapist", "text": "How are you?"}, {"speaker": "patient", "text": "Fine."},
                  {"speaker": "therapist", "text": "And work?"}, {"speaker": "patient", "text": "I drive."}]})


def chat(text, **extra):
    return {"choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                         "finish_reason": extra.pop("finish_reason", "stop")}], **extra}


class Endpoint:
    """A scripted OpenAI-compatible server on a loopback address. reply(request body) -> (status,
    headers, body bytes, seconds between body bytes). Records every Authorization header."""

    def __init__(self, reply, host="127.0.0.1"):
        self.auth, self.requests = [], 0
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_POST(self):
                request = self.rfile.read(int(self.headers.get("Content-Length", 0))).decode()
                outer.auth.append(self.headers.get("Authorization"))
                outer.requests += 1
                status, headers, raw, trickle = reply(request)
                try:
                    self.send_response(status)
                    for k, v in {"Content-Length": str(len(raw)), **headers}.items():
                        self.send_header(k, v)
                    self.end_headers()
                    for i in range(0, len(raw), 1 if trickle else len(raw) or 1):
                        self.wfile.write(raw[i:i + (1 if trickle else len(raw))])
                        self.wfile.flush()
                        time.sleep(trickle)
                except (BrokenPipeError, ConnectionResetError):
                    pass

        self.server = ThreadingHTTPServer((host, 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://{host}:{self.server.server_address[1]}/v1"

    def close(self):
        self.server.shutdown()


def answering(p2l, l2l="Nothing conflicts. []", status=200, headers=None, trickle=0.0):
    """reply(): p2l / l2l are chat bodies (dicts), bytes, or texts for chat()."""
    def body(x):
        return x if isinstance(x, bytes) else json.dumps(x if isinstance(x, dict) else chat(x)).encode()

    return lambda request: (status, headers or {}, body(l2l if "Python list" in request else p2l), trickle)


@pytest.fixture
def endpoint(monkeypatch):
    monkeypatch.setenv("PPG_JUDGE_API_KEY", SECRET)
    made = []

    def make(reply, host="127.0.0.1"):
        made.append(Endpoint(reply, host))
        return made[-1]

    yield make
    for e in made:
        e.close()


def judge_of(url, tmp_path=None, **kw):
    cfg = JudgeConfig(kind="llm", base_url=url, timeout_s=kw.pop("timeout_s", 2.0), retries=kw.pop("retries", 1),
                      backoff_s=0.01, concurrency=1, max_tokens=96, **kw)
    return LLMJudge(cfg, cache=VerdictCache(tmp_path / "cache.sqlite") if tmp_path else None)


# (case, prompt-to-line answer, line-to-line answer) -> (persona verdicts, commitment verdicts, counted reasons)
ANSWERS = [
    ("both verdict words", "NO, it does not contradict... well YES it does", "[]",
     [None, None], [1, 1], {"both_words": 2}),
    ("cut off by the token limit", chat("It fits. NO", finish_reason="length"), "[]",
     [None, None], [1, 1], {"cut_off": 2}),
    ("an index the judge was never shown", "It fits. NO", "It conflicts with line 2. [2]",
     [1, 1], [1, None], {"unshown_index": 1}),
    ("an index with a leading zero", "It fits. NO", "[01]", [1, 1], [1, None], {"malformed_list": 1}),
    ("a negative index", "It fits. NO", "[-1]", [1, 1], [1, None], {"malformed_list": 1}),
    ("no verdict at all", "I cannot tell.", "Hard to say.", [None, None], [1, None], {"no_verdict": 3}),
    ("a usage count given as a string", chat("It fits. NO", usage={"prompt_tokens": "12", "completion_tokens": []}),
     "[]", [1, 1], [1, 1], {}),
    ("another model answered", chat("It fits. NO", model="gpt-3.5-turbo"), "[]",
     [None, None], [1, 1], {"other_model": 2}),
    ("a dated snapshot of the asked model", chat("It fits. NO", model="judge-2024-07-18"), "[1]",
     [1, 1], [1, 0], {}),
    ("a 10 MB answer to a 96-token budget", "NO " * 3_500_000, "[]", [None, None], [1, 1], {"oversized": 2}),
]


@pytest.mark.parametrize("case,p2l,l2l,persona,commitment,reasons", ANSWERS, ids=[a[0] for a in ANSWERS])
def test_an_answer_that_is_not_a_verdict_is_unknown_and_counted(endpoint, tmp_path, case, p2l, l2l, persona,
                                                                 commitment, reasons):
    e = endpoint(answering(p2l, l2l))
    judge = judge_of(e.url, tmp_path)
    [d] = judge.judge([dialogue()])
    turns = d.turns("patient")
    assert [t.judge["persona"] for t in turns] == persona
    assert [t.judge["commitment"] for t in turns] == commitment
    assert {k[len("unknown."):]: v for k, v in judge.counts.items() if k.startswith("unknown.")} == reasons
    assert [t.reward for t in turns] == [None if both_hold(p, c) is None else float(both_hold(p, c))
                                         for p, c in zip(persona, commitment)]  # an unknown is never a 0 or 1
    stored = json.dumps(d.model_dump()) + "".join(a.text or "" for a in (judge.cache.get(k) for k in keys(judge))
                                                  if a is not None)
    assert len(stored) < 100_000  # an oversized answer is stored nowhere
    if "model" in (p2l if isinstance(p2l, dict) else {}):
        assert turns[0].judge["by"]["answered_by"] == [p2l["model"]]


def keys(judge):
    return [row[0] for row in judge.cache.db.execute("SELECT key FROM answers")]


def test_another_models_answers_are_not_cached_for_the_asked_model(endpoint, tmp_path):
    e = endpoint(answering(chat("It fits. NO", model="other"), chat("[]", model="other")))
    judge = judge_of(e.url, tmp_path)
    judge.judge([dialogue()])
    assert len(judge.cache) == 0 and judge.counts["unknown.other_model"] == 3
    good = endpoint(answering(chat("It fits. NO", model="judge"), chat("[]", model="judge")))
    again = judge_of(good.url, tmp_path)
    [d] = again.judge([dialogue()])
    assert [t.reward for t in d.turns("patient")] == [1.0, 1.0] and again.counts["cache_hits"] == 0
    assert len(again.cache) == 3 and d.turns("patient")[0].judge["by"]["answered_by"] == ["judge"]


def test_a_redirect_is_never_followed_and_the_key_goes_nowhere_else(endpoint):
    elsewhere = endpoint(answering("It fits. NO"), host="127.0.0.2")
    e = endpoint(answering("It fits. NO", status=307, headers={"Location": f"{elsewhere.url}/chat/completions"}))
    with pytest.raises(JudgeError, match="HTTP 307 redirect to host 127.0.0.2 not followed") as err:
        judge_of(e.url).judge([dialogue()])
    assert elsewhere.requests == 0 and set(e.auth) == {f"Bearer {SECRET}"} and SECRET not in str(err.value)
    found = endpoint(answering(chat("It fits. NO"), status=302, headers={"Location": "/v1/elsewhere"}))
    with pytest.raises(JudgeError, match="HTTP 302 redirect"):  # a body holding a completion is still no answer
        judge_of(found.url).judge([dialogue()])


def test_a_trickling_server_is_cut_at_the_deadline_and_the_error_says_what_was_tried(endpoint):
    e = endpoint(answering("It fits. NO", trickle=0.2))  # one byte every 0.2 s: ~20 s for the body
    t0 = time.monotonic()
    with pytest.raises(JudgeError, match=r"failed after 2 attempts \(last: no whole answer within 1 s\)"):
        judge_of(e.url, timeout_s=1.0, retries=1).judge([dialogue()])
    # each attempt is cut at 1 s (its body alone would take ~20 s): with one request in flight at a
    # time two questions' attempts interleave, and the first to fail both of its own ends the stage
    assert time.monotonic() - t0 < 5.5


def test_retry_after_is_honoured_up_to_its_bound(endpoint):
    calls = []

    def reply(request):
        if "Line spoken by patient: Fine." not in request:
            return answering("It fits. NO")(request)
        calls.append(time.monotonic())
        if len(calls) == 1:
            return 429, {"Retry-After": "2"}, b"{}", 0.0
        return answering("It fits. NO")(request)

    e = endpoint(reply)
    [d] = judge_of(e.url, retries=2).judge([dialogue()])
    assert [t.reward for t in d.turns("patient")] == [1.0, 1.0] and calls[1] - calls[0] >= 1.9
    calls.clear()
    judge_of(e.url, retries=2, retry_after_max_s=0.3).judge([dialogue()])
    assert calls[1] - calls[0] < 1.0
    always = endpoint(lambda request: (429, {"Retry-After": "0"}, b"{}", 0.0))
    with pytest.raises(JudgeError, match=r"failed after 3 attempts \(last: HTTP 429 \(Retry-After 0 s\)\)"):
        judge_of(always.url, retries=2).judge([dialogue()])


def test_a_body_that_is_no_chat_completion_is_retried_then_a_one_line_error(endpoint):
    for body in (b"[1, 2]", b'{"choices": "none"}', b'{"choices": [{"message": {"content": 7}}]}', b"\xff\xfe"):
        e = endpoint(answering(body, body))
        with pytest.raises(JudgeError, match=r"failed after 2 attempts \(last: not a chat completion"):
            judge_of(e.url).judge([dialogue()])
