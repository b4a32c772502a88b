"""The Great Expectations gate: clean data passes; each planted defect fails exactly its check."""

from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from ppg.cli import app
from ppg.config import ValidateConfig
from ppg.data.importers import import_paths
from ppg.data.validate import line_table, run_suite

FIX = Path(__file__).parent / "fixtures"
CFG = ValidateConfig(max_text_chars=200, max_null_share=0.2, max_duplicate_share={"*": 0.1},
                     label_balance={"consistent-llms/therapy": [0.2, 0.5]})


@pytest.fixture(scope="module")
def table():
    ds, _ = import_paths("consistent-llms", [FIX / "consistent_llms_small.json"])
    return line_table(ds, "fixture.json")


def failed(df):
    checks, raw = run_suite(df, CFG)
    assert raw["statistics"]["evaluated_expectations"] == len(checks)
    return {c.name: c for c in checks if not c.success}


def test_clean_table_passes(table):
    assert failed(table) == {}


def plant(df, **kw):
    df = df.copy()
    for column, (row, value) in kw.items():
        df.loc[row, column] = value
    return df


def therapy_rows(df):
    return df.index[df["domain"] == "therapy"]


DEFECTS = {
    "text is never null": lambda df: plant(df, text=(2, None)),
    "dialogue_id is never null": lambda df: plant(df, dialogue_id=(0, None)),
    "reward is in [0, 1] or null": lambda df: plant(df, reward=(1, 1.5)),
    "text length within [1, 200]": lambda df: plant(df, text=(1, "")),
    "dialogue ids are unique": lambda df: df.assign(dialogue_id="same"),
    "every evaluated speaker has a non-empty persona": lambda df: plant(df, persona_chars=(1, 0.0)),
    "speakers alternate (or meta.non_alternating_reason says why)": lambda df: plant(df, alternation_break=(4, 1.0)),
    "share of evaluated turns without a verdict <= 0.2": lambda df: df.assign(
        verdict_missing=np.where(df["turn"] >= 0, 1.0, np.nan)),
    "share of repeated lines of consistent-llms (same speaker, same text) <= 0.1": lambda df: df.assign(
        duplicate_line=1.0),
    "contradiction share of consistent-llms/therapy in [0.2, 0.5]": lambda df: df.assign(
        contradiction=np.where((df["domain"] == "therapy") & (df["turn"] >= 0), 1.0, df["contradiction"])),
}


@pytest.mark.parametrize("check", DEFECTS)
def test_each_planted_defect_fails_its_check(table, check):
    bad = failed(DEFECTS[check](table))
    assert list(bad) == [check]
    if "share" not in check:
        assert bad[check].offenders, "a row-level failure lists the offending records"
        assert set(bad[check].offenders[0]) == {"file", "dialogue_id", "line", "turn"}


def test_line_table_marks_turns_and_alternation(table):
    edu = table[table["dialogue_id"] == "consistent_llms_small:0"]
    assert edu["turn"].tolist() == [-1, 0, -1, 1, -1, 2, -1, 3]
    assert edu["verdict_missing"].tolist()[1::2] == [0.0, 0.0, 0.0, 1.0]
    assert table["alternation_break"].sum() == 0  # speakers come from line indices


def test_validate_command_writes_report_and_fails_on_a_bad_dataset(tmp_path):
    imported = tmp_path / "imported"
    runner = CliRunner()
    assert runner.invoke(app, ["import", "-f", "consistent-llms", str(FIX / "consistent_llms_small.json"),
                               "--out", str(imported)]).exit_code == 0
    params = tmp_path / "params.yaml"
    params.write_text("validate:\n  max_null_share: 0.5\n  label_balance: {consistent-llms/therapy: [0.9, 1.0]}\n")
    res = runner.invoke(app, ["validate", str(imported), "--out", str(tmp_path / "v"), "--params", str(params)])
    assert res.exit_code == 1
    report = (tmp_path / "v/report.md").read_text()
    assert "FAILED" in report and "## FAIL: contradiction share of consistent-llms/therapy in [0.9, 1.0]" in report
    assert f"{imported / 'dialogues.jsonl'}, dialogue consistent_llms_small:1, line 3, turn 1" in report
    assert (tmp_path / "v/gx_result.json").exists()
    # the fixture's chatting is 25% contradictions
    params.write_text("validate:\n  max_null_share: 0.5\n  label_balance: {}\n")
    res = runner.invoke(app, ["validate", str(imported), "--out", str(tmp_path / "v"), "--params", str(params)])
    assert res.exit_code == 0 and "PASSED" in (tmp_path / "v/report.md").read_text()


def test_the_report_escapes_ids_so_data_cannot_forge_a_heading_or_a_cell():
    from ppg.data.validate import Check, report_markdown

    forged = "v1\n## FAIL: everything is fine | pass"
    md = report_markdown([Check("text length within [1, 10]", False, 3.0,
                                [{"file": "a|b.jsonl", "dialogue_id": forged, "line": 0, "turn": 0}])], "x.jsonl", 5)
    lines = md.splitlines()
    assert [x for x in lines if x.startswith("## ")] == ["## FAIL: text length within [1, 10]"]  # no forged heading
    assert "- a\\|b.jsonl, dialogue v1\\n## FAIL: everything is fine \\| pass, line 0, turn 0" in lines
