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
    ("consistent-llms", cl(setitem(["eval_prompt_consistency", 0], [1, 5])),
     "field eval_prompt_consistency[0]: expected"),
    ("consistent-llms", cl(setitem(["eval_index_consistency"], "[1]")),
     "field eval_index_consistency: expected a list"),
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
    ("synthetic-persona-chat",
     b'user 1 personas,user 2 personas,Best Generated Conversation\na,b,"User 1: hi\nBot: yo"\n',
     "record 0: field Best Generated Conversation[1]: expected 'User 1:' or 'User 2:'"),
    ("synthetic-persona-chat", b'user 1 personas,user 2 personas,Best Generated Conversation\na,b,""\n',
     "record 0: field Best Generated Conversation: empty conversation"),
    # -- the classes of the hardening round: each refused at import, naming file, line and field --
    # unknown fields where the format is ours (free-form data belongs in meta / lines[].meta)
    ("jsonl", canon(setitem(["lines", 0, "Reward"], 1.0)),
     ":1 (dialogue_id='d1'): field lines.0.Reward: unknown field"),
    ("jsonl", canon(setitem(["metadata"], {"k": 1})), "field metadata: unknown field"),
    # duplicate keys: the last would win and the first value vanish
    ("jsonl", json.dumps(CANON).replace('"lines":', '"lines": [], "lines":', 1).encode() + b"\n",
     ":1: field lines: the key appears twice in one object"),
    ("consistent-llms", json.dumps([GOOD]).replace('"P2":', '"P2": "x", "P2":', 1).encode(),
     "field P2: the key appears twice in one object"),
    # speakers that do not match
    ("jsonl", canon(setitem(["lines", 0, "speaker"], "b")), "evaluated speaker 'a' has no line (lines are by ['b']"),
    ("jsonl", canon(setitem(["lines", 0, "speaker"], "A ")), "'A ' differs only in case or spaces"),
    ("jsonl", canon(setitem(["evaluated_speakers"], [])), "evaluated_speakers is empty but personas has ['a']"),
    ("jsonl", canon(setitem(["personas", "a"], "  ")), "personas.a: empty backstory for an evaluated speaker"),
    ("jsonl", canon(setitem(["lines"], [])), "field lines: List should have at least 1 item"),
    # text that is not text
    ("jsonl", canon(setitem(["lines", 0, "text"], "hi\x00there")),
     "field lines.0.text: Value error, control character U+0000"),
    ("jsonl", canon(setitem(["lines", 0, "text"], "\x1b[31mred\x1b[0m")), "control character U+001B at position 0"),
    ("jsonl", canon(setitem(["lines", 0, "text"], "\u200b\u200d\ufeff")),
     "field lines.0.text: Value error, no visible character"),
    # segment partitions, checked where they are read
    ("jsonl", canon(setitem(["meta"], {"segment_starts": {"a": [0, 0]}})), "meta.segment_starts.a: must be increasing"),
    ("jsonl", canon(setitem(["meta"], {"segment_starts": {"a": [0.0]}})),
     "meta.segment_starts.a: expected a non-empty list of integers"),
    ("jsonl", canon(setitem(["meta"], {"segment_starts": {"a": [0, 3]}})), "below 1 (the speaker's turns), got [0, 3]"),
    ("jsonl", canon(setitem(["meta"], {"segment_starts": [0, 1]})),
     "meta.segment_starts: expected {speaker: [turn indices]}"),
    ("jsonl", canon(setitem(["meta"], {"segment_starts": {"z": [0]}})),
     "meta.segment_starts.z: 'z' is not an evaluated speaker"),
    # crashes that are errors now
    ("jsonl", b"", "no dialogues found"),
    ("consistent-llms", b" \n\t\n", "empty file (expected a JSON list of dialogues)"),
    ("synthetic-persona-chat", b'user 1 personas,user 2 personas,Best Generated Conversation\na,b,"User 1: hi",extra\n',
     ":2: record 0: 1 more field(s) than the header's 3 columns"),
    ("jsonl", b"[" * 5000 + b"]" * 5000 + b"\n", ":1: not valid JSON: nested deeper than Python can parse"),
    ("jsonl", b'{"dialogue_id": "d1", "meta": ' + b'{"a": ' * 80 + b"1" + b"}" * 80 + b"}\n",
     "JSON nested deeper than 64"),
    # importer heuristics: conflicting verdicts are refused, never "last wins"
    ("consistent-llms",
     cl(lambda r: r["eval_prompt_consistency"].append([r["eval_prompt_consistency"][0][0], "It contradicts. YES"])),
     "conflicting verdicts for one line"),
    # a bad byte is named by its line
    ("jsonl", canon(lambda r: None, n=2) + b"\xff\n", ":3: not UTF-8 at byte"),
    # errors name the field as the source spells it, not the canonical field it became
    ("consistent-llms", cl(setitem(["task_name"], " ")), "record 0: field task_name: String should have at least 1"),
    ("consistent-llms", cl(setitem(["conversation", 1, 1], "Student: \x07ding")),
     "record 0: field conversation[1]: Value error, control"),
    # a turn kind (the turn_kind baseline's key) is a name, never a number or blank
    ("jsonl", canon(setitem(["lines", 0, "meta"], {"kind": 3})), "field lines.0.meta: Value error, meta.kind must be"),
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
    res = CliRunner().invoke(app, ["validate", str(imported), "--out", str(report),
                                   "--params", str(ROOT / "params.yaml")])
    if case["stops_at"] == "accepted":  # unusual but valid: passes the gate and builds as written
        return assert_builds_as_written(res, src, imported, tmp_path, case["turns"])
    assert res.exit_code == 1, res.output
    text = (report / "report.md").read_text()
    assert "\nFAILED: " in text, text[:300]
    assert f"| {case['error']}" in text, text
    if "offender" in case:  # a row-level check lists the record: file, dialogue, line, turn
        assert str(imported / "dialogues.jsonl") in text and case["offender"] in text, text


def assert_builds_as_written(res, src: Path, imported: Path, tmp_path: Path, turns: int):
    import pyarrow.parquet as pq

    from ppg.data.schema import read_dialogues

    assert res.exit_code == 0, res.output
    want = [json.loads(x) for x in src.read_bytes().decode("utf-8-sig").split("\n") if x.strip()]
    got = read_dialogues(imported / "dialogues.jsonl")
    assert [d.model_dump(include={"dialogue_id", "personas", "evaluated_speakers"}) for d in got] == \
        [{k: w[k] for k in ("dialogue_id", "personas", "evaluated_speakers")} for w in want]
    assert [[ln.text for ln in d.lines] for d in got] == [[ln["text"] for ln in w["lines"]] for w in want]
    params = tmp_path / "params.yaml"
    params.write_text("model: {spec: tiny, base: ''}\nbuild: {splits: {train: 1.0}}\n")
    res = CliRunner().invoke(app, ["build", str(imported), "--out", str(tmp_path / "built"), "--params", str(params)])
    assert res.exit_code == 0, res.output
    rows = pq.read_table(tmp_path / "built/train.parquet").to_pylist()
    assert len({r["sequence_id"] for r in rows}) == len(rows) == len(want)  # one sequence each, ids distinct
    assert sum(len(set(r["turn_index"]) - {-1}) for r in rows) == turns  # every turn placed, none forged


@pytest.mark.parametrize("fmt,content,message", [c for c in CASES if len(c[1]) > 100_000],
                         ids=["cl-10MB", "jsonl-10MB"])
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
    res = CliRunner().invoke(app, ["import", "-f", "consistent-llms", str(src), str(copy_),
                                   "--out", str(tmp_path / "o")])
    text = " ".join(res.output.split())
    assert res.exit_code == 2 and ("the same dialogue (domain, personas and lines) as "
                                   "'fixtures/consistent_llms_small:0'") in text and "a copied file?" in text


def test_failed_import_keeps_the_previous_output_intact(tmp_path):
    out = tmp_path / "out"
    ok = CliRunner().invoke(app, ["import", "-f", "consistent-llms", str(FIX / "consistent_llms_small.json"),
                                  "--out", str(out)])
    assert ok.exit_code == 0, ok.output
    before = (out / "dialogues.jsonl").read_bytes()
    bad = tmp_path / "bad.json"
    bad.write_bytes(b"[42]")
    res = CliRunner().invoke(app, ["import", "-f", "consistent-llms", str(bad), "--out", str(out)])
    assert res.exit_code == 2
    assert (out / "dialogues.jsonl").read_bytes() == before
    assert sorted(p.name for p in out.iterdir()) == ["dialogues.jsonl", "summary.json"]


def test_files_that_share_a_name_import_side_by_side_and_train(tmp_path, tiny_model):
    """Two real exports both called consistent_llms.json (different dialogues, one with a byte-order
    mark and Unicode line separators): imported side by side, validated, built and trained on."""
    from ppg.config import BuildConfig, LoraConfig, MlflowConfig, ModelConfig, Params, TrainConfig
    from ppg.train.offline import train

    other = copy.deepcopy(json.loads((FIX / "consistent_llms_small.json").read_text()))
    for rec in other:
        rec["conversation"] = [[i, t.replace("\n", "") + " (later)\u2028more"] for i, t in rec["conversation"]]
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    (tmp_path / "a/consistent_llms.json").write_bytes((FIX / "consistent_llms_small.json").read_bytes())
    (tmp_path / "b/consistent_llms.json").write_bytes("\ufeff".encode() + json.dumps(other).encode())
    imported = tmp_path / "imported"
    res = CliRunner().invoke(app, ["import", "-f", "consistent-llms", str(tmp_path / "a/consistent_llms.json"),
                                   str(tmp_path / "b/consistent_llms.json"), "--out", str(imported)])
    assert res.exit_code == 0, res.output
    from ppg.data.schema import read_dialogues

    ds = read_dialogues(imported / "dialogues.jsonl")
    assert [d.dialogue_id for d in ds] == [f"{x}/consistent_llms:{i}" for x in "ab" for i in range(3)]
    assert ds[3].lines[0].text.endswith("(later)\u2028more")  # the separator is text, the record one line
    params = tmp_path / "params.yaml"
    params.write_text("validate:\n  max_null_share: 0.5\n  label_balance: {}\n")
    res = CliRunner().invoke(app, ["validate", str(imported), "--out", str(tmp_path / "v"), "--params", str(params)])
    assert res.exit_code == 0, res.output
    from ppg.data.build import build_dataset

    build_dataset(imported, tmp_path / "built", tiny_model, "tiny", ["k2"], {"length": 2},
                  BuildConfig(max_length=512, splits={"train": 1.0}))
    p = Params(model=ModelConfig(spec="tiny", base=""),
               train=TrainConfig(data=str(tmp_path / "built"), out=str(tmp_path / "models"),
                                 workdir=str(tmp_path / "w"), batch_size=2, max_steps=2,
                                 lora=LoraConfig(enabled=False)),
               mlflow=MlflowConfig(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db", artifacts=str(tmp_path / "art")))
    r = train(p, "k2", progress=False)
    assert r["steps"] == 2 and r["weights"]["sequences"] == 8  # 4 sequences per file, both files


def test_a_folder_takes_every_data_extension_and_lists_what_it_skipped(tmp_path):
    inbox = tmp_path / "incoming"
    inbox.mkdir()
    (inbox / "A.JSONL").write_bytes(canon(lambda r: None))
    (inbox / "b.ndjson").write_bytes(canon(lambda r: r.update(dialogue_id="d2",
                                                              lines=[{"speaker": "a", "text": "yo"}])))
    (inbox / "notes.txt").write_text("not data")
    res = CliRunner().invoke(app, ["import", "-f", "jsonl", str(inbox), "--out", str(tmp_path / "o")])
    assert res.exit_code == 0, res.output
    summary = json.loads((tmp_path / "o/summary.json").read_text())
    assert summary["total"]["dialogues"] == 2 and summary["skipped_files"] == [str(inbox / "notes.txt")]
    assert "skipped 1 file(s)" in res.output


def test_consistent_llms_strips_only_the_speakers_names(tmp_path):
    from ppg.data.importers import import_paths

    rec = copy.deepcopy(GOOD)
    first = rec["conversation"][2][1]
    rec["conversation"][2][1] = first.split(":", 1)[0] + ": Honestly: https://example.org/a:b is where I read it."
    rec["conversation"][4][1] = "Honestly: no name here."
    (tmp_path / "c.json").write_text(json.dumps([rec]))
    [d], _ = import_paths("consistent-llms", [tmp_path / "c.json"])
    assert d.lines[2].text == "Honestly: https://example.org/a:b is where I read it." and d.lines[2].name
    assert d.lines[4].text == "Honestly: no name here." and d.lines[4].name is None


def test_an_out_that_is_a_file_is_refused_before_anything_is_written(tmp_path):
    blocker = tmp_path / "imported"
    blocker.write_text("I am a file")
    for out in (blocker, blocker / "sub"):
        res = CliRunner().invoke(app, ["import", "-f", "consistent-llms", str(FIX / "consistent_llms_small.json"),
                                       "--out", str(out)])
        assert res.exit_code == 2 and f"--out: {blocker} is a file, not a folder; nothing written" in res.output
    assert blocker.read_text() == "I am a file"


@pytest.mark.parametrize("fmt,name,content", [
    ("synthetic-persona-chat", "spc.csv",
     b'user 1 personas,user 2 personas,Best Generated Conversation\na,b,"User 1: hi\nUser 2: yo"\n'),
    ("consistent-llms", "cl.json", json.dumps([GOOD]).encode()),
    ("jsonl", "c.jsonl", canon(lambda r: None)),
])
def test_a_byte_order_mark_is_dropped_not_reported_as_a_missing_column(tmp_path, fmt, name, content):
    src = tmp_path / name
    src.write_bytes("\ufeff".encode() + content)
    res = import_(src, fmt, tmp_path / "o")
    assert res.exit_code == 0, res.output
    assert json.loads((tmp_path / "o/summary.json").read_text())["total"]["dialogues"] == 1
