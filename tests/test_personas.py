"""Persona lists for real-persona evaluation: the Consistent-LLMs pool layout in, the project's
persona file out; a bad entry is an error naming the file and the entry."""

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ppg.cli import app
from ppg.data.personas import import_personas, read_personas

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "consistent-llms" / "personas"


def pools(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "therapy__config_therapy_personas.json").write_text(json.dumps(
        [{"description": "I am a nurse who sleeps badly.", "strategy": "I deflect."},
         {"description": "I moved cities last year.", "strategy": "I overshare."}]))
    (folder / "chatting__config_chatting_personas.json").write_text(json.dumps(
        [{"persona": '"Meet Ann, a \\"keen\\" baker."', "name": "Ann"}]))
    (folder / "education__config_education_personas.json").write_text(json.dumps(
        [["Fractions", {"grade_level": "middle school", "description": "I learn from worked examples."}]]))
    (folder / "therapy__config_therapy.json").write_text("{}")  # a role config: not a pool, not read
    return folder


def test_the_three_pool_shapes_become_one_persona_file(tmp_path):
    out = tmp_path / "personas.jsonl"
    r = CliRunner().invoke(app, ["import-personas", str(pools(tmp_path / "pools")), "--out", str(out)])
    assert r.exit_code == 0, r.output
    got = read_personas(out)
    assert [(x["domain"], x["speaker"]) for x in got] == [("chatting", "speaker"), ("education", "student"),
                                                        ("therapy", "patient"), ("therapy", "patient")]
    assert got[0]["persona"] == 'Meet Ann, a "keen" baker.' and got[0]["meta"] == {"name": "Ann"}
    assert got[1]["meta"] == {"topic": "Fractions", "grade_level": "middle school"}
    assert got[2]["persona"] == "I am a nurse who sleeps badly." and got[2]["meta"] == {"strategy": "I deflect."}
    r = CliRunner().invoke(app, ["import-personas", str(tmp_path / "pools"), "--out", str(out), "--domain", "therapy",
                                 "--limit", "1"])
    assert r.exit_code == 0 and [x["persona"] for x in read_personas(out)] == ["I am a nurse who sleeps badly."]


def test_a_bad_pool_entry_names_the_file_and_the_entry(tmp_path):
    f = tmp_path / "therapy__config_therapy_personas.json"
    f.write_text(json.dumps([{"description": "ok"}, {"backstory": "a key no pool uses"}]))
    with pytest.raises(ValueError, match=r"therapy__config_therapy_personas.json: entry 1: expected \{description"):
        import_personas(f)


@pytest.mark.skipif(not SHARED.exists(), reason="no ../shared/data/consistent-llms")
def test_the_shared_consistent_llms_pools_import_whole():
    got, merged = import_personas(SHARED)
    by = {d: sum(x["domain"] == d for x in got) for d in ("chatting", "education", "therapy")}
    # the education pool lists three [topic, student] entries twice, word for word
    assert by == {"chatting": 200, "education": 97, "therapy": 100} and merged == 3
    assert all(x["persona"].strip() for x in got)


CHATTING = "chatting__config_chatting_personas.json"
# (case, pool file name, its entries) -> what the one error says (None: accepted)
POOL_CASES = [
    ("another domain's layout", CHATTING, [{"description": "I am a nurse.", "strategy": "x"}],
     "entry 0: expected {persona, ...} (the layout of chatting persona pools), got keys ['description', 'strategy']"),
    ("a 5 MB backstory", CHATTING, [{"persona": "I bake. " * 700_000}], "entry 0: persona: 5,599,999 characters"),
    ("an escape character", CHATTING, [{"persona": "I bake.\x1b[31m red"}],
     "entry 0: persona: control character U+001B"),
    ("a NUL", CHATTING, [{"persona": "I bake.\x00"}], "entry 0: persona: control character U+0000"),
    ("only invisible characters", CHATTING, [{"persona": "\u200b\u200b"}], "entry 0: persona: no visible character"),
    ("a domain without a known layout", "cooking__config_cooking_personas.json", [{"persona": "I cook."}],
     "domain 'cooking' has no known persona pool layout"),
]


@pytest.mark.parametrize("case,name,entries,says", POOL_CASES, ids=[c[0] for c in POOL_CASES])
def test_a_bad_pool_is_refused_naming_file_entry_and_field(tmp_path, case, name, entries, says):
    f = tmp_path / name
    f.write_text(json.dumps(entries))
    out = tmp_path / "personas.jsonl"
    r = CliRunner().invoke(app, ["import-personas", str(f), "--out", str(out)])
    assert r.exit_code == 2 and says in r.output and str(f) in r.output, r.output
    assert len(r.output) < 400 and not out.exists()


def test_exact_repeats_are_merged_and_counted_and_a_persona_file_may_not_repeat_one(tmp_path):
    f = tmp_path / CHATTING
    f.write_text(json.dumps([{"persona": "I bake.", "name": "A"}, {"persona": "I swim."},
                             {"persona": "I bake.", "name": "A"}, {"persona": "I bake.", "name": "B"}]))
    out = tmp_path / "personas.jsonl"
    r = CliRunner().invoke(app, ["import-personas", str(f), "--out", str(out)])
    assert r.exit_code == 0 and "merged 1 exact repeat into their first" in r.output, r.output
    assert [(x["persona"], x["meta"]) for x in read_personas(out)] == [
        ("I bake.", {"name": "A"}), ("I swim.", {}), ("I bake.", {"name": "B"})]


BAKE, SWIM = '{"domain": "chatting", "persona": "I bake."}\n', '{"domain": "chatting", "persona": "I swim."}\n'
# the project's persona file (eval.personas_file): content -> the error
FILE_CASES = [
    ('{"domain": "therapy", "persona": "x"}\n{"domain": "therapy", "persona": ""}\n',
     "line 2: field 'persona' must be a non-empty string"),
    (BAKE + SWIM + BAKE, "line 3: the same persona as line 1"),
    ('{"domain": "chatting", "persona": "I bake.\\u001b[2J"}\n', "line 1: field 'persona': control character U+001B"),
    ('["chatting", "I bake."]\n', "line 1: expected an object {domain, persona, ...}, got list"),
    (BAKE + '{"domain": "chatting", "persona": "I swim.", "meta": [1]}\n', "line 2: field 'speaker' must be a string"),
]


@pytest.mark.parametrize("content,says", FILE_CASES)
def test_a_bad_persona_file_is_refused_naming_the_line_and_field(tmp_path, content, says):
    f = tmp_path / "personas.jsonl"
    f.write_text(content)
    with pytest.raises(ValueError) as e:
        read_personas(f)
    assert str(e.value) == f"{f}: {says}" or str(e.value).startswith(f"{f}: {says}"), str(e.value)
