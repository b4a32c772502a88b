"""`ppg monitor` reads what the server writes: a record it cannot use is skipped and counted by
reason, the rest is judged; a line still being written waits for the next check; nothing is read
twice; a version the registry does not have is counted apart; no traceback reaches the user."""

import json
import os

import pytest
from test_monitor import register, served

from ppg.config import DataConfig, JudgeConfig, MlflowConfig, MonitorConfig, Params
from ppg.data.schema import write_dialogues


@pytest.fixture
def p(tmp_path):
    incoming = tmp_path / "incoming"
    p = Params(data=DataConfig(source=f"jsonl:{incoming}"), judge=JudgeConfig(),
               monitor=MonitorConfig(incoming=str(incoming), state=str(tmp_path / "state"), min_turns=4),
               mlflow=MlflowConfig(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db", artifacts=str(tmp_path / "a")))
    return register(p, tmp_path, versions=1)  # version 1: what is served


def lines_of(dialogues) -> bytes:
    return "".join(json.dumps(d.model_dump(), ensure_ascii=False) + "\n" for d in dialogues).encode()


def test_the_request_log_of_serve_model_is_read_chats_without_a_persona_counted(p, tmp_path):
    """Records exactly as the servers write them (ppg.chat_model.request_record): a chat with a
    system message is judged, one without has no persona to judge against and is counted."""
    from ppg.chat_model import request_record, write_record
    from ppg.monitor import check

    logs = tmp_path / "logs"
    params = {"max_tokens": 16, "temperature": 0.0}
    persona = [{"role": "system", "content": "I am Ana, a nurse from Porto."}]
    for i in range(3):
        ask = persona + [{"role": "user", "content": f"hi {i}"}]
        write_record(logs, request_record(ask, "I work nights.", f"chatcmpl-a{i}", params, "chatting",
                                          "ppg-chatting/1"))
    write_record(logs, request_record([{"role": "user", "content": "hi"}], "hello", "chatcmpl-b", params,
                                      "chatting", "ppg-chatting/1"))  # no system message
    r = check(p, logs)
    assert r["skipped"] == {"no_persona": 1} and r["versions"]["ppg-chatting/1"]["score"]["turns"] == 3


def test_a_line_still_being_written_waits_and_nothing_is_read_twice(p, tmp_path):
    from ppg.monitor import check

    logs = tmp_path / "logs"
    logs.mkdir()
    ds = served(4, 0)
    text = lines_of(ds)
    cut = len(lines_of(ds[:3])) + 40  # three whole records and the start of the fourth
    (logs / "requests.jsonl").write_bytes(text[:cut])
    r = check(p, logs)
    assert r["versions"]["ppg-chatting/1"]["score"]["n"] == 3 and r["skipped"] == {"incomplete": 1}
    assert r["pending"] == {str(logs / "requests.jsonl"): 40}
    with open(logs / "requests.jsonl", "ab") as f:  # the server finishes the line, then writes two more
        f.write(text[cut:] + lines_of(served(2, 1)))
    r = check(p, logs)
    assert r["versions"]["ppg-chatting/1"]["score"]["n"] == 3 and r["skipped"] == {}  # the 4th and the 2 new
    assert check(p, logs)["versions"] == {}  # nothing new: nothing judged again
    (logs / "requests.jsonl").write_bytes(lines_of(served(2, 2)))  # rotated: a new file under the old name
    assert check(p, logs)["versions"]["ppg-chatting/1"]["score"]["n"] == 2


def test_bad_records_are_skipped_and_counted_and_the_rest_is_judged(p, tmp_path):
    from ppg.monitor import check

    logs = tmp_path / "logs"
    logs.mkdir()
    good = served(5, 0)
    unnamed = served(1, 1)[0].model_copy(update={"meta": {}})
    other = served(2, 2, version="ppg-chatting/9")  # a version nobody registered
    repeated = served(1, 3)[0]
    (logs / "a.jsonl").write_bytes(
        lines_of(good) + b'{"dialogue_id": "x", "lines": []}\n' + b"\xff\xfe not utf-8\n" + b"[1, 2]\n"
        + b"{not json\n" + lines_of([unnamed] + other) + lines_of([repeated]) * 2000)
    os.symlink(logs / "loop", logs / "loop")  # a symlink to itself
    r = check(p, logs)
    assert r["skipped"] == {"invalid": 1, "not_utf8": 1, "not_json": 2, "no_model_version": 1, "repeated": 1999,
                            "dead_symlink": 1}
    assert r["unregistered"] == {"ppg-chatting/9": 2}
    assert r["versions"]["ppg-chatting/1"]["score"]["n"] == 6  # the 5 good and one of the 2,000 repeats
    assert "a.jsonl at byte 5325: field domain" in r["examples"]["invalid"]
    assert not (tmp_path / "incoming").exists()


def test_ppg_monitor_says_what_is_wrong_in_one_line_without_a_traceback(tmp_path, prefect_api):
    """The command as a user runs it (a process of its own: Prefect's log handlers bound to a test
    runner's captured streams would outlive it and break later flows of the session)."""
    import subprocess
    import sys
    from pathlib import Path

    (tmp_path / "params.yaml").write_text(
        f"data:\n  source: simulator\nmonitor:\n  incoming: {tmp_path / 'incoming'}\n  state: {tmp_path / 'state'}\n"
        f"mlflow:\n  tracking_uri: sqlite:///{tmp_path}/mlflow.db\n  artifacts: {tmp_path / 'a'}\n")
    write_dialogues(tmp_path / "logs" / "a.jsonl", served(2, 0))
    r = subprocess.run([str(Path(sys.executable).parent / "ppg"), "monitor", "--logs", str(tmp_path / "logs"),
                        "--workspace", str(tmp_path), "--no-retrain"], capture_output=True, text=True, timeout=300,
                       env={**os.environ, "PREFECT_API_URL": prefect_api})
    last = r.stderr.strip().splitlines()[-1]  # after Prefect's own lines about the run
    assert r.returncode == 2 and last.startswith("error: monitor.incoming: data.source 'simulator' does not"), last
    assert "Traceback" not in r.stdout + r.stderr
