"""Malformed inputs: each stops `ppg import` with an error naming file, record and field, and
leaves no output behind; data that parses but is wrong as a whole fails the validation gate.
The cases below are also the files of the tests/bad_inputs/ corpus (checked to agree)."""

import copy
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ppg.cli import app

FIX = Path(__file__).parent / "fixtures"
GOOD = json.loads((FIX / "consistent_llms_small.json").read_text())[0]
CANON = {"dialogue_id": "d1", "domain": "therapy", "source": "s", "personas": {"a": "I am A."},
         "evaluated_speakers": ["a"], "lines": [{"speaker": "a", "text": "hi", "reward": 1.0}]}


def cl(mutate):
    rec = copy.deepcopy(GOOD)
    mutate(rec)
    return json.dumps([rec]).encode()


def canon(mutate, n=1):
    recs = []
    for i in range(n):
        rec = copy.deepcopy(CANON)
        rec["dialogue_id"] = f"d{i + 1}"
        mutate(rec)
        recs.append(json.dumps(rec))
    return ("\n".join(recs) + "\n").encode()


def setitem(path, value):
    def mutate(rec):
        *head, last = path
        for k in head:
            rec = rec[k]
        rec[last] = value
    return mutate


CASES = [
    ("consistent-llms", json.dumps([GOOD]).encode()[:-40], "not valid JSON"),
    ("consistent-llms", json.dumps(GOOD).encode(), "expected a JSON list of dialogues"),
    ("consistent-llms", b"[42]", "record 0: field record: expected an object"),
    ("consistent-llms", cl(lambda r: r.pop("conversation")), "record 0: field conversation: missing or empty"),
    ("consistent-llms", cl(setitem(["conversation"], [])), "record 0: field conversation: missing or empty"),
    ("consistent-llms", cl(setitem(["conversation", 1], "Student: hi")), "record 0: field conversation[1]: expected"),
    ("consistent-llms", cl(setitem(["conversation", 2, 0], 5)), "field conversation[2]: line index 5, expected 2"),
    ("consistent-llms", cl(setitem(["eval_prompt_consistency", 0, 0], 99)),
     "field eval_prompt_consistency[0]: line index 99 outside the conversation"),
    ("consistent-llms", cl(setitem(["eval_prompt_consistency", 0], [1, 5])), "field eval_prompt_consistency[0]: expected"),
    ("consistent-llms", cl(setitem(["eval_index_consistency"], "[1]")), "field eval_index_consistency: expected a list"),
    ("consistent-llms", cl(setitem(["P2"], 7)), "record 0: field P2: missing or not a string"),
    ("consistent-llms", cl(lambda r: r.pop("task_name")), "record 0: field task_name"),
    ("consistent-llms", cl(setitem(["conversation", 1, 1], "Student: " + "x" * 10_000_000)),
     "field conversation[1]: 10000000 characters (max 20000)"),
    ("consistent-llms", "[{\"P1\": \"caf\u00e9\"}]".encode("latin-1"), "not UTF-8 at byte"),
    ("jsonl", canon(setitem(["lines", 0, "reward"], 1.5)), "field lines.0.reward"),
    ("jsonl", canon(setitem(["lines", 0, "reward"], float("nan"))), "field lines.0.reward"),
    ("jsonl", canon(setitem(["lines", 0, "reward"], "1")), "field lines.0.reward"),
    ("jsonl", canon(setitem(["dialogue_id"], "same"), n=2), "field dialogue_id: duplicate of line 1"),
    ("jsonl", canon(lambda r: r.pop("lines")), "field lines: Field required"),
    ("jsonl", canon(setitem(["personas"], ["I am A."])), "field personas"),
    ("jsonl", canon(setitem(["evaluated_speakers"], ["b"])), "evaluated speaker 'b' has no entry in personas"),
    ("jsonl", canon(setitem(["lines", 0, "text"], None)), "field lines.0.text"),
    ("jsonl", canon(setitem(["lines", 0, "text"], "y" * 10_000_000)), "field lines.0.text: String should have at most"),
    ("jsonl", canon(lambda r: None)[:-10] + b"\n", ":1: not valid JSON"),
    ("jsonl", b"\xff\xfe" + canon(lambda r: None), "not UTF-8 at byte 0"),
    ("jsonl", b"[1, 2]\n", ":1: field record"),
    ("synthetic-persona-chat", b"user 1 personas,Best Generated Conversation\na,User 1: hi\n",
     "missing column 'user 2 personas'"),
    ("synthetic-persona-chat", b'user 1 personas,user 2 personas,Best Generated Conversation\na,b,"User 1: hi\nBot: yo"\n',
     "record 0: field Best Generated Conversation[1]: expected 'User 1:' or 'User 2:'"),
    ("synthetic-persona-chat", b'user 1 personas,user 2 personas,Best Generated Conversation\na,b,""\n',
     "record 0: field Best Generated Conversation: empty conversation"),
]


CORPUS = Path(__file__).parent / "bad_inputs"
MANIFEST = json.loads((CORPUS / "cases.json").read_text())
ROOT = Path(__file__).resolve().parents[1]


def import_(src: Path, fmt: str, out: Path):
    return CliRunner().invoke(app, ["import", "-f", fmt, str(src), "--out", str(out)])


def assert_stopped_at_import(res, src: Path, message: str, out: Path):
    assert res.exit_code == 2, res.output
    text = " ".join(res.output.split())  # rich may wrap long messages
    assert str(src) in text and message in text, text
    assert not out.exists() or not any(out.iterdir())


@pytest.mark.parametrize("case", MANIFEST, ids=[c["file"] for c in MANIFEST])
def test_each_bad_input_of_the_corpus_stops_before_training(tmp_path, case):
    """tests/bad_inputs/ (cases.json says where each file stops): import names file, record and
    field and writes nothing; what only the whole table shows fails the validation gate, whose
    report names the check and the offending dialogue and line."""
    src, imported, report = CORPUS / case["file"], tmp_path / "imported", tmp_path / "validation"
    res = import_(src, case["format"], imported)
    if case["stops_at"] == "import":
        return assert_stopped_at_import(res, src, case["error"], imported)
    assert res.exit_code == 0, res.output
    res = CliRunner().invoke(app, ["validate", str(imported), "--out", str(report), "--params", str(ROOT / "params.yaml")])
    assert res.exit_code == 1, res.output
    text = (report / "report.md").read_text()
    assert "\nFAILED: " in text, text[:300]
    assert f"| {case['error']}" in text, text
    if "offender" in case:  # a row-level check lists the record: file, dialogue, line, turn
        assert str(imported / "dialogues.jsonl") in text and case["offender"] in text, text


@pytest.mark.parametrize("fmt,content,message", [c for c in CASES if len(c[1]) > 100_000], ids=["cl-10MB", "jsonl-10MB"])
def test_oversized_lines_stop_at_import(tmp_path, fmt, content, message):
    src = tmp_path / "in" / "input.data"
    src.parent.mkdir()
    src.write_bytes(content)
    assert_stopped_at_import(import_(src, fmt, tmp_path / "out"), src, message, tmp_path / "out")


def test_the_corpus_covers_every_inline_case():
    small = [c for c in CASES if len(c[1]) <= 100_000]
    files = [c for c in MANIFEST if c["stops_at"] == "import"]
    assert [(c["format"], c["error"]) for c in files] == [(f, m) for f, _, m in small]
    assert [(CORPUS / c["file"]).read_bytes() for c in files] == [b for _, b, _ in small]
    assert len(MANIFEST) >= 25


def test_the_same_dialogue_from_two_files_is_a_duplicate(tmp_path):
    src = FIX / "consistent_llms_small.json"
    copy_ = tmp_path / "consistent_llms_small.json"
    copy_.write_bytes(src.read_bytes())
    res = CliRunner().invoke(app, ["import", "-f", "consistent-llms", str(src), str(copy_), "--out", str(tmp_path / "o")])
    text = " ".join(res.output.split())
    assert res.exit_code == 2 and "the same dialogue (domain, personas and lines) as 'fixtures/consistent_llms_small:0'" \
        in text and "a copied file?" in text


def test_failed_import_keeps_the_previous_output_intact(tmp_path):
    out = tmp_path / "out"
    ok = CliRunner().invoke(app, ["import", "-f", "consistent-llms", str(FIX / "consistent_llms_small.json"), "--out", str(out)])
    assert ok.exit_code == 0, ok.output
    before = (out / "dialogues.jsonl").read_bytes()
    bad = tmp_path / "bad.json"
    bad.write_bytes(b"[42]")
    res = CliRunner().invoke(app, ["import", "-f", "consistent-llms", str(bad), "--out", str(out)])
    assert res.exit_code == 2
    assert (out / "dialogues.jsonl").read_bytes() == before
    assert sorted(p.name for p in out.iterdir()) == ["dialogues.jsonl", "summary.json"]
