"""The validation gate: a Great Expectations suite over the line-level table of a dataset.

GX stays behind this one module (its API moves between releases). The schema (pydantic) has
already rejected malformed records; this gate checks what only the whole table shows: unique
ids, alternation, text bounds, share of missing verdicts, duplicate lines, label balance.
"""

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from ppg.data.schema import LINE_BREAKS, Dialogue

INDEX_COLUMNS = ["file", "dialogue_id", "line", "turn"]


def line_table(dialogues: list[Dialogue], file: str) -> pd.DataFrame:
    """One row per line. turn = index among its speaker's lines when the speaker is evaluated,
    else -1. Rate columns are NaN where they do not apply, so GX means skip them."""
    rows = []
    for d in dialogues:
        seen_text, counts, reason = set(), {}, d.meta.get("non_alternating_reason")
        for i, ln in enumerate(d.lines):
            evaluated = ln.speaker in d.evaluated_speakers
            turn = counts.get(ln.speaker, 0)
            counts[ln.speaker] = turn + 1
            group = f"{d.source}/{d.domain}".strip().casefold()  # `Therapy` gets therapy's bounds
            rows.append({
                "file": file, "dialogue_id": d.dialogue_id, "source": d.source, "domain": d.domain,
                "group": group, "line": i, "turn": turn if evaluated else -1, "speaker": ln.speaker,
                "text": ln.text, "reward": ln.reward,
                "persona_chars": float(len(d.personas.get(ln.speaker, "").strip())) if evaluated else np.nan,
                "alternation_break": float(i > 0 and d.lines[i - 1].speaker == ln.speaker and not reason),
                "duplicate_line": float((ln.speaker, ln.text) in seen_text),
                "verdict_missing": float(ln.reward is None) if evaluated else np.nan,
                "contradiction": float(ln.reward < 0.5) if evaluated and ln.reward is not None else np.nan,
                "no_evaluated_speaker": float(not d.evaluated_speakers),
            })
            seen_text.add((ln.speaker, ln.text))
    return pd.DataFrame(rows, columns=None if rows else INDEX_COLUMNS)


@dataclass
class Check:
    name: str
    success: bool
    observed: object
    offenders: list[dict] = field(default_factory=list)


def _expectations(df, cfg):
    """(name, GX expectation, indicator column whose 1s are the offending rows or None)."""
    import great_expectations.expectations as gxe

    out = [(f"{c} is never null", gxe.ExpectColumnValuesToNotBeNull(column=c), None)
           for c in ("dialogue_id", "domain", "source", "speaker", "text")]
    out += [
        ("reward is in [0, 1] or null",
         gxe.ExpectColumnValuesToBeBetween(column="reward", min_value=0, max_value=1), None),
        (f"text length within [{cfg.min_text_chars}, {cfg.max_text_chars}]",
         gxe.ExpectColumnValueLengthsToBeBetween(column="text", min_value=cfg.min_text_chars,
                                                 max_value=cfg.max_text_chars), None),
        ("dialogue ids are unique", gxe.ExpectCompoundColumnsToBeUnique(column_list=["dialogue_id", "line"]), None),
        ("every evaluated speaker has a non-empty persona",
         gxe.ExpectColumnValuesToBeBetween(column="persona_chars", min_value=1), None),
        ("every dialogue has an evaluated speaker (whose turns train)",
         gxe.ExpectColumnValuesToBeInSet(column="no_evaluated_speaker", value_set=[0.0]), "no_evaluated_speaker"),
        ("speakers alternate (or meta.non_alternating_reason says why)",
         gxe.ExpectColumnValuesToBeInSet(column="alternation_break", value_set=[0.0]), None),
        (f"share of evaluated turns without a verdict <= {cfg.max_null_share}",
         gxe.ExpectColumnMeanToBeBetween(column="verdict_missing", max_value=cfg.max_null_share), "verdict_missing"),
    ]
    shares = {k.strip().casefold(): v for k, v in cfg.max_duplicate_share.items()}
    balance = {k.strip().casefold(): v for k, v in cfg.label_balance.items()}
    for source in sorted(df["source"].dropna().unique()) if len(df) else []:
        bound = shares.get(source.strip().casefold(), shares.get("*", 1.0))
        col = f"duplicate_line[{source}]"
        df[col] = df["duplicate_line"].where(df["source"] == source)
        out.append((f"share of repeated lines of {source} (same speaker, same text) <= {bound}",
                    gxe.ExpectColumnMeanToBeBetween(column=col, max_value=bound), col))
    for group in sorted(df["group"].dropna().unique()) if len(df) else []:
        lo, hi = balance.get(group, balance.get(group.split("/")[0] + "/*", (0.0, 1.0)))
        col = f"contradiction[{group}]"
        df[col] = df["contradiction"].where(df["group"] == group)
        if df[col].notna().any():
            out.append((f"contradiction share of {group} in [{lo}, {hi}]",
                        gxe.ExpectColumnMeanToBeBetween(column=col, min_value=lo, max_value=hi), col))
    return out


def run_suite(df: pd.DataFrame, cfg) -> tuple[list[Check], dict]:
    """Run the suite on the table; returns readable checks and GX's JSON result."""
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    df = df.copy()
    expectations = _expectations(df, cfg)
    ctx = gx.get_context(mode="ephemeral")
    ctx.variables.progress_bars = ProgressBarsConfig(globally=False)
    batch = ctx.data_sources.add_pandas("ppg").add_dataframe_asset("lines").add_batch_definition_whole_dataframe("all")
    suite = ctx.suites.add(gx.ExpectationSuite(name="ppg_lines"))
    for _, e, _ in expectations:
        suite.add_expectation(e)
    vd = ctx.validation_definitions.add(gx.ValidationDefinition(name="ppg_lines", data=batch, suite=suite))
    res = vd.run(batch_parameters={"dataframe": df},
                 result_format={"result_format": "COMPLETE", "unexpected_index_column_names": INDEX_COLUMNS})
    by_id = {r.expectation_config.id: r for r in res.results}  # GX reorders results: match by id
    checks = []
    for name, e, indicator in expectations:
        r = by_id[e.id]
        result = r.result or {}
        if indicator is not None:
            observed = result.get("observed_value")
            offenders = df.loc[df[indicator] == 1.0, INDEX_COLUMNS].head(5).to_dict("records")
        else:
            observed = f"{result.get('unexpected_count', 0)} unexpected"
            unexpected = result.get("unexpected_index_list") or []
            offenders = [{c: row.get(c) for c in INDEX_COLUMNS} for row in unexpected][:5]
        checks.append(Check(name, bool(r.success), observed, offenders))
    return checks, res.to_json_dict()


def report_markdown(checks: list[Check], source: str, n_lines: int) -> str:
    """Data (ids, file names, domains) is escaped: an id with a newline or a `|` cannot forge a
    heading or a table cell."""
    failed = [c for c in checks if not c.success]
    head = [f"# Validation of {_md(source)}", "",
            f"{'FAILED' if failed else 'PASSED'}: {len(checks) - len(failed)} of {len(checks)} checks pass "
            f"on {n_lines} lines.", ""]
    body = ["| check | result | observed |", "|---|---|---|"]
    body += [f"| {_md(c.name)} | {'pass' if c.success else '**FAIL**'} | {_md(_fmt(c.observed))} |" for c in checks]
    for c in failed:
        body += ["", f"## FAIL: {_md(c.name)}", f"Observed: {_md(_fmt(c.observed))}", ""]
        body += [f"- {_md(o['file'])}, dialogue {_md(o['dialogue_id'])}, line {o['line']}, turn {o['turn']}"
                 for o in c.offenders]
    return "\n".join(head + body) + "\n"


def _md(x) -> str:
    """One line of literal text for markdown: line breaks and control characters written as
    escapes (JSON's), so nothing can start a heading or a list item, and the characters that end
    a table cell or open an HTML tag or code (|, `, < before a letter) escaped."""
    text = json.dumps(str(x), ensure_ascii=False)[1:-1].replace('\\"', '"')
    for raw, escaped in LINE_BREAKS.items():
        text = text.replace(raw, escaped)
    return re.sub(r"[|`]|<(?=[A-Za-z/!?])", lambda m: "\\" + m.group(), text)


def _fmt(v):
    return f"{v:.4f}" if isinstance(v, float) else str(v)


def validate_dataset(src: Path, out: Path, cfg) -> bool:
    """Validate DIR/dialogues.jsonl (or a .jsonl file); write report.md + gx_result.json to out."""
    from ppg.data.schema import read_dialogues
    from ppg.io import atomic_open

    path = src / "dialogues.jsonl" if src.is_dir() else src
    df = line_table(read_dialogues(path), str(path))
    checks, raw = run_suite(df, cfg)
    with atomic_open(out / "gx_result.json") as f:
        json.dump(raw, f, indent=1, default=str)
    with atomic_open(out / "report.md") as f:
        f.write(report_markdown(checks, str(path), len(df)))
    return all(c.success for c in checks)
