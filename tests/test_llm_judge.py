"""LLMJudge over real HTTP: against `ppg serve-judge` (`transformers serve`, tiny model) and a
fault-injecting server."""

import json
import logging
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from ppg.data.schema import Dialogue
from ppg.config import JudgeConfig
from ppg.judges.llm import JudgeError, LLMJudge

SECRET = "sk-test-DO-NOT-LEAK-1234567890"


def dialogue():
    return Dialogue.model_validate({
        "dialogue_id": "d1", "domain": "therapy", "source": "test",
        "personas": {"patient": "I am Sam, a bus driver who keeps answers short.", "therapist": ""},
        "evaluated_speakers": ["patient"],
        "lines": [{"speaker": "therapist", "text": "How are you?"}, {"speaker": "patient", "text": "Fine."},
                  {"speaker": "therapist", "text": "And work?"}, {"speaker": "patient", "text": "I fly planes."}]})


def serve(handler_cls):
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler_cls)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def completion(text):
    return {"choices": [{"index": 0, "message": {"role": "assistant", "content": text}}]}


class Scripted(BaseHTTPRequestHandler):
    """Answers from a script shared by the test: entries (match, status, body, delay); a request
    takes the first entry whose `match` occurs in its body (requests arrive in any order)."""
    script: list = []
    seen_auth: list = []
    lock = threading.Lock()

    def log_message(self, *a):
        pass

    def do_POST(self):
        import time

        request = self.rfile.read(int(self.headers.get("Content-Length", 0))).decode()
        Scripted.seen_auth.append(self.headers.get("Authorization"))
        with Scripted.lock:
            i = next((i for i, e in enumerate(Scripted.script) if e[0] in request), None)
            _, status, body, delay = Scripted.script.pop(i) if i is not None else ("", 200, completion("NO []"), 0)
        time.sleep(delay)
        raw = body if isinstance(body, bytes) else json.dumps(body).encode()
        try:
            self.send_response(status)
            self.send_header("Content-Length", str(len(raw)))
            self.end_headers()
            self.wfile.write(raw)
        except (BrokenPipeError, ConnectionResetError):
            pass


@pytest.fixture
def scripted(monkeypatch):
    monkeypatch.setenv("PPG_JUDGE_API_KEY", SECRET)
    Scripted.script, Scripted.seen_auth = [], []
    server = serve(Scripted)
    yield server
    server.shutdown()


def config(server, **kw):
    return JudgeConfig(kind="llm", base_url=f"http://127.0.0.1:{server.server_address[1]}/v1", timeout_s=1.0,
                          retries=2, backoff_s=0.01, concurrency=1, **kw)


def test_verdicts_rewards_and_nulls(scripted):
    # line 1 (first turn): prompt-to-line only; line 3: prompt-to-line then line-to-line
    Scripted.script = [("Line spoken by patient: Fine.", 200, completion("It fits the background. NO"), 0),
                       ("Line spoken by patient: I fly", 200,
                        completion("Flying planes contradicts driving buses. YES."), 0),
                       ("Python list", 200, completion("It conflicts with nothing I can see"), 0)]
    judge = LLMJudge(config(scripted))
    [d] = judge.judge([dialogue()])
    turns = d.turns("patient")
    assert turns[0].reward == 1.0
    assert turns[1].reward == 0.0  # YES decides even though line-to-line had no parseable list
    assert turns[1].judge["line_to_line"] is None
    # the verdict shape every judge writes (ppg.judges.base): what evaluation reads
    assert [(t.judge["persona"], t.judge["commitment"]) for t in turns] == [(1, 1), (0, None)]
    assert judge.counts["null_line_to_line"] == 1 and judge.counts["null_prompt_to_line"] == 0
    assert Scripted.seen_auth == [f"Bearer {SECRET}"] * 3


def test_an_answer_without_verdict_is_null_not_a_number(scripted):
    Scripted.script = [("Line spoken by patient: Fine.", 200, completion("I am not sure about this one."), 0),
                       ("Line spoken by patient: I fly", 200, completion("NO"), 0),
                       ("Python list", 200, completion("[]"), 0)]
    judge = LLMJudge(config(scripted))
    [d] = judge.judge([dialogue()])
    assert d.turns("patient")[0].reward is None and judge.counts["null_prompt_to_line"] == 1
    assert d.turns("patient")[1].reward == 1.0


def test_faults_are_retried_then_succeed(scripted, caplog, capsys):
    Scripted.script = [("", 500, {"error": "boom"}, 0), ("", 200, b"<html>garbage</html>", 0),
                       ("", 200, completion("ok NO"), 1.5)]  # then the default answer: "NO []"
    judge = LLMJudge(config(scripted))
    with caplog.at_level(logging.DEBUG):
        [d] = judge.judge([dialogue()])
    assert [t.reward for t in d.turns("patient")] == [1.0, 1.0]
    assert judge.counts["retries"] == 3  # a 500, a garbage body, a response slower than the timeout
    out = capsys.readouterr()
    assert SECRET not in caplog.text + out.out + out.err + repr(judge) + json.dumps(d.model_dump())


def test_a_dead_endpoint_fails_clearly_without_leaking_the_key(scripted, caplog, capsys):
    Scripted.script = [("", 503, {"error": "down"}, 0)] * 10
    judge = LLMJudge(config(scripted))
    with (caplog.at_level(logging.DEBUG),
          pytest.raises(JudgeError, match=r"failed after 3 attempts \(last: HTTP 503\)") as e):
        judge.judge([dialogue()])
    out = capsys.readouterr()
    assert SECRET not in str(e.value) + caplog.text + out.out + out.err
    Scripted.script = [("", 401, {"error": "bad key"}, 0)]
    with pytest.raises(JudgeError, match=r"HTTP 401 .*PPG_JUDGE_API_KEY") as e:
        LLMJudge(config(scripted)).judge([dialogue()])
    assert SECRET not in str(e.value)


def test_against_ppg_serve_judge_over_real_http(tiny_model, monkeypatch):
    """`ppg serve-judge` is `transformers serve` pinned to the model under the judge's name: the
    judge's requests are answered, one naming another model is refused, and neither the key nor
    the dialogue reaches its log."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    import httpx

    from ppg.io import free_port
    from ppg.judges.serve import wait_healthy

    monkeypatch.setenv("PPG_JUDGE_API_KEY", SECRET)
    port = free_port()
    proc = subprocess.Popen([str(Path(sys.executable).parent / "ppg"), "serve-judge", "--model", str(tiny_model),
                             "--port", str(port), "--device", "cpu"], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(proc, url, 120, lambda: proc.stdout.read())
        judge = LLMJudge(JudgeConfig(kind="llm", base_url=f"{url}/v1", model="judge", max_tokens=8, timeout_s=60))
        [d] = judge.judge([dialogue()])
        # a random tiny model rarely says YES/NO: whatever it says is parsed by the strict rule
        assert judge.counts["requests"] == 3 and judge.counts["retries"] == 0
        turns = d.turns("patient")
        assert all(isinstance(t.judge["prompt_to_line"], str) for t in turns)
        nulls = sum(t.reward is None for t in turns)
        assert nulls <= 2 and judge.counts["null_prompt_to_line"] <= 2
        other = httpx.post(f"{url}/v1/chat/completions", timeout=30, json={
            "model": "someone-else", "max_tokens": 2, "messages": [{"role": "user", "content": "hi"}]})
        assert other.status_code == 400 and "pinned to 'judge'" in other.text
        # on the CPU its continuous-batching cache is bounded: transformers' default (60% of the
        # machine's memory) had two such servers killed by the kernel for want of memory
        import psutil

        server = psutil.Process(proc.pid)
        rss = sum(x.memory_info().rss for x in [server, *server.children(recursive=True)])
        assert rss < 3 * 2 ** 30, f"the judge server holds {rss / 2 ** 30:.1f} GiB"
    finally:
        os.killpg(proc.pid, 15)
        out = proc.communicate(timeout=30)[0]
    # uvicorn's access log names method, path and status; never a header (the key) or a body (the persona)
    assert '"POST /v1/chat/completions HTTP/1.1" 200' in out and SECRET not in out and "bus driver" not in out
