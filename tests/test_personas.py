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
    with pytest.raises(ValueError, match=r"therapy__config_therapy_personas.json: entry 1: expected"):
        import_personas(f)
    bad = tmp_path / "p.jsonl"
    bad.write_text('{"domain": "therapy", "persona": "x"}\n{"domain": "therapy", "persona": ""}\n')
    with pytest.raises(ValueError, match=r"p.jsonl: line 2: field 'persona' must be a non-empty string"):
        read_personas(bad)


@pytest.mark.skipif(not SHARED.exists(), reason="no ../shared/data/consistent-llms")
def test_the_shared_consistent_llms_pools_import_whole():
    got = import_personas(SHARED)
    by = {d: sum(x["domain"] == d for x in got) for d in ("chatting", "education", "therapy")}
    assert by == {"chatting": 200, "education": 100, "therapy": 100} and all(x["persona"].strip() for x in got)
