from pathlib import Path

import pytest

from ppg.data.formats import conflict_list, prompt_verdict
from ppg.data.importers import import_paths
from ppg.data.schema import DataError, read_dialogues, write_dialogues

FIX = Path(__file__).parent / "fixtures"
SHARED = Path(__file__).resolve().parents[2] / "shared/data/consistent-llms/dialogues"


@pytest.mark.parametrize("text,reward", [
    ("... consistent with the background. NO", 1.0), ("It contradicts. YES.", 0.0), ("Fits. (NO)", 1.0),
    ("Reasoning here.\n\nNO.", 1.0), ("It aligns. YES (It aligns with the job)", 0.0),
    ("YES or NO: NO", 1.0), ("NO, then on reflection YES", 0.0), ("No verdict, yes? nope", None),
    ("NOTE: YESTERDAY it was fine", None), ("", None), (None, None),
])
def test_prompt_verdict_is_the_last_standalone_upper_case_token(text, reward):
    assert prompt_verdict(text) == reward


@pytest.mark.parametrize("text,conflicts", [
    ("No conflict.\n\n[]", []), ("Conflicts with [1, 3] and then [5]", [5]), ("see [ 2 ,4 ]", [2, 4]),
    ("Conflicting lines list: []", []), ("no list at all", None), ("a list of words [a, b]", None),
])
def test_line_to_line_is_the_last_bracketed_integer_list(text, conflicts):
    assert conflict_list(text) == conflicts


def by_id(dialogues):
    return {d.dialogue_id: d for d in dialogues}


def test_consistent_llms_fixture_covers_every_quirk(tmp_path):
    ds, summary = import_paths("consistent-llms", [FIX / "consistent_llms_small.json"])
    d = by_id(ds)
    edu, ther, chat = (d[f"consistent_llms_small:{i}"] for i in range(3))
    assert edu.evaluated_speakers == ["P2"] and edu.domain == "education"
    assert [ln.reward for ln in edu.turns("P2")] == [1.0, 0.0, 1.0, None]  # last: no verdict, not 0
    assert [ln.judge["line_to_line"] for ln in edu.turns("P2")] == [None, [1], [], None]
    assert [ln.judge["line_to_line_status"] for ln in edu.turns("P2")] == ["no_entry", "ok", "ok", "unparseable"]
    assert edu.turns("P2")[3].text == "Teacher: can we do another picture?"  # only the first prefix goes
    assert all(ln.reward is None for ln in edu.turns("P1"))
    assert [ln.reward for ln in ther.turns("P2")] == [1.0, 0.0, 1.0]
    # chatting: both speakers judged; speaker by index even when the name prefix says otherwise
    assert chat.evaluated_speakers == ["P1", "P2"]
    assert [ln.speaker for ln in chat.lines] == ["P1", "P2", "P1", "P2"]
    assert chat.lines[2].name == "Kofi" and chat.lines[2].text == "I also studied octopuses, actually."
    assert [ln.reward for ln in chat.turns("P1")] == [1.0, 0.0]
    assert chat.personas["P1"] == 'Meet Dana "Dee" Ortiz, 30, a marine biologist from Lisbon.'
    t = summary["total"]
    assert (t["verdict_yes"], t["verdict_no"], t["verdict_null"]) == (3, 7, 1)
    assert (t["line_to_line_ok"], t["line_to_line_unparseable"], t["line_to_line_no_entry"]) == (6, 1, 4)
    assert summary["by_domain"]["chatting"]["judged_lines"] == 4
    # round trip: written canonical JSONL reads back to equal models
    write_dialogues(tmp_path / "d.jsonl", ds)
    assert read_dialogues(tmp_path / "d.jsonl") == ds


@pytest.mark.skipif(not SHARED.exists(), reason="../shared/data/consistent-llms not present")
@pytest.mark.parametrize("file,yes,no,null,unparseable", [
    ("chatting__mistral-instruct_0_10_727.json", 30, 969, 1, 0),
    ("education__mistral-instruct_0_615.json", 128, 326, 11, 2),
    ("education__mistral-instruct_0_807.json", 116, 493, 11, 2),
    ("therapy__mistral-instruct_0_261.json", 386, 232, 2, 113),
])
def test_shared_real_files_give_the_pinned_verdict_counts(file, yes, no, null, unparseable):
    ds, summary = import_paths("consistent-llms", [SHARED / file])
    t = summary["total"]
    assert abs(t["verdict_yes"] - yes) <= 2 and abs(t["verdict_no"] - no) <= 2
    assert abs(t["verdict_null"] - null) <= 2
    assert abs(t.get("line_to_line_unparseable", 0) - unparseable) <= 2
    nulls = sum(ln.reward is None for d in ds for s in d.evaluated_speakers for ln in d.turns(s))
    assert nulls == t["verdict_null"]  # unknown stays unknown in the records


def test_synthetic_persona_chat_csv():
    ds, summary = import_paths("synthetic-persona-chat", [FIX / "synthetic_persona_chat_small.csv"])
    assert len(ds) == 2 and summary["total"]["lines"] == 6
    d = ds[0]
    assert d.personas == {"user1": "I have two dogs. I work as a nurse.", "user2": "I love hiking. I am vegan."}
    assert [ln.speaker for ln in d.lines] == ["user1", "user2", "user1", "user2"]
    assert all(ln.reward is None for ln in d.lines)  # judged later, never a made-up number


def test_chitchat_packaged_corpus():
    ds, summary = import_paths("chitchat", [Path("-")])
    assert len(ds) == 7164 and summary["total"]["skipped_overlong"] == 4
    assert summary["total"]["lines"] == 138725
    assert all(not d.evaluated_speakers for d in ds[:50])
    assert {ln.speaker for ln in ds[0].lines} == {"A", "B"}


def test_the_source_manifest_hashes_every_file_the_import_reads(tmp_path):
    from ppg.data.importers import source_manifest

    (tmp_path / "in").mkdir()
    (tmp_path / "in/a.jsonl").write_text("x\n")
    (tmp_path / "in/notes.txt").write_text("not data\n")  # a folder's import reads *.json/*.jsonl only
    (tmp_path / "b.json").write_text("[]")
    m = source_manifest(f"jsonl:{tmp_path / 'in'},{tmp_path / 'b.json'}")
    assert [Path(f["path"]).name for f in m["files"]] == ["a.jsonl", "b.json"]
    before = m["files"][0]["sha256"]
    (tmp_path / "in/a.jsonl").write_text("y\n")
    assert source_manifest(f"jsonl:{tmp_path / 'in'}")["files"][0]["sha256"] != before
    assert source_manifest("simulator") == {"source": "simulator", "files": []}
    with pytest.raises(DataError, match=r"data.source: .*missing.jsonl: no such file"):
        source_manifest(f"jsonl:{tmp_path / 'missing.jsonl'}")
    with pytest.raises(DataError, match="data.source: expected simulator or FORMAT:PATH"):
        source_manifest("csv:x")
