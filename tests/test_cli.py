import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ppg.cli import app

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "data/examples/dialogues.jsonl"
runner = CliRunner()


def test_help_lists_the_commands_and_each_has_help():
    import typer.main

    res = runner.invoke(app, ["--help"], env={"COLUMNS": "300"})
    commands = typer.main.get_command(app).commands
    assert res.exit_code == 0 and len(commands) >= 25
    for name, cmd in commands.items():
        first = " ".join((cmd.help or "").split(".")[0].split())
        assert first and name in res.output, name  # listed, with a docstring
        sub = runner.invoke(app, [name, "--help"], env={"COLUMNS": "300"})
        assert sub.exit_code == 0 and " ".join(sub.output.split()).count(first[:40]) == 1, name


def test_console_script_runs_without_importing_prefect():
    code = ("import sys; from ppg.cli import app; "
            "assert 'prefect' not in sys.modules and 'torch' not in sys.modules, 'heavy import'")
    subprocess.run([sys.executable, "-c", code], check=True)
    out = subprocess.run([str(Path(sys.executable).parent / "ppg"), "--help"], capture_output=True,
                         text=True, check=True)
    assert "returns" in out.stdout


def weights(rows, dialogue, speaker, policy):
    return [r[policy] for r in rows if (r["dialogue_id"], r["speaker"]) == (dialogue, speaker)]


def test_returns_on_the_examples_gives_hand_computed_weights(tmp_path):
    out = tmp_path / "w.jsonl"
    res = runner.invoke(app, ["returns", str(EXAMPLES), "--params", str(ROOT / "params.yaml"),
                              "--policies", "greedy,k2,full,segment", "--out", str(out)])
    assert res.exit_code == 0, res.output
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    # therapy patient: rewards 1 1 0 1 0; segments of length 3 (params.yaml): {0, 1, 2}, {3, 4}
    assert weights(rows, "ex-therapy-1", "patient", "k2") == [2, 1, 1, 1, 0]
    assert weights(rows, "ex-therapy-1", "patient", "full") == [3, 2, 1, 1, 0]
    assert weights(rows, "ex-therapy-1", "patient", "segment") == [2, 1, 0, 1, 0]
    # education student: rewards 1 1 0 null -> the unknown stays unknown, and only where credited
    assert weights(rows, "ex-education-1", "student", "reward") == [1, 1, 0, None]
    assert weights(rows, "ex-education-1", "student", "k2") == [2, 1, None, None]
    assert weights(rows, "ex-education-1", "student", "full") == [None, None, None, None]
    assert weights(rows, "ex-education-1", "student", "segment") == [2, 1, 0, None]  # length 3
    # chatting: both speakers evaluated, each on its own turns
    assert weights(rows, "ex-chatting-1", "sam", "full") == [2, 1, 1]
    assert weights(rows, "ex-chatting-1", "alex", "greedy") == [1, 1, 0]


def test_bad_record_names_file_line_and_field_and_writes_nothing(tmp_path):
    lines = EXAMPLES.read_text().splitlines()
    bad = json.loads(lines[1])
    bad["lines"][3]["reward"] = 1.5
    src = tmp_path / "bad.jsonl"
    src.write_text("\n".join([lines[0], json.dumps(bad)]) + "\n")
    out = tmp_path / "w.jsonl"
    res = runner.invoke(app, ["returns", str(src), "--out", str(out)])
    assert res.exit_code == 2
    assert f"{src}:2 (dialogue_id='ex-education-1'): field lines.3.reward" in res.output
    assert not out.exists() and list(tmp_path.iterdir()) == [src]


def test_unknown_config_key_is_an_error_naming_file_and_key(tmp_path):
    params = tmp_path / "params.yaml"
    params.write_text("returns:\n  gama: 0.9\n")
    res = runner.invoke(app, ["returns", str(EXAMPLES), "--params", str(params)])
    assert res.exit_code == 2 and f"{params}: returns: unknown key(s) 'gama'; known:" in res.output
    params.write_text("returns:\n  policies: [greedy, k0]\n")
    res = runner.invoke(app, ["returns", str(EXAMPLES), "--params", str(params)])
    assert res.exit_code == 2 and "policy id 'k0'" in res.output


def test_run_refuses_a_config_that_can_never_promote_before_any_stage(tmp_path):
    (tmp_path / "params.yaml").write_text((ROOT / "params.yaml").read_text())
    overlay = tmp_path / "offline.yaml"
    overlay.write_text("eval: {mode: offline, primary: offline.auc}\n")
    res = runner.invoke(app, ["run", "--workspace", str(tmp_path), "--params", str(overlay)])
    assert res.exit_code == 2 and "registry.thresholds: online.reward is never measured" in res.output
    assert not (tmp_path / ".ppg-work").exists() and not (tmp_path / "mlflow").exists()  # nothing started


def test_the_study_runs_under_the_real_data_overlay(tmp_path):
    """The study sets its own online evaluation: the pipeline's offline primary and thresholds
    (params.consistent-llms.yaml) must not make its cells' params invalid."""
    import yaml

    from ppg.config import Params
    from ppg.overlay import merged_text
    from ppg.study.sim import study_params

    merged = merged_text(ROOT / "params.yaml", ROOT / "params.consistent-llms.yaml")
    p = Params.from_dict(yaml.safe_load(merged), "merged")
    assert p.eval.mode == "offline"
    cp = study_params(p, distances=[2], data=tmp_path, here=tmp_path, model="tiny", policies=["k3"],
                 weights=p.study.weights["shaped"], steps=2, lr=1e-3, batch=2, dialogues=4, seed=0)
    assert cp.eval.mode == "online" and cp.eval.primary == "online.reward" and cp.registry.thresholds == {}


@pytest.mark.parametrize("record,field", [
    ({"dialogue_id": "x", "domain": "d", "source": "s", "personas": {"a": "p"},
      "evaluated_speakers": ["b"], "lines": [{"speaker": "a", "text": "hi"}]}, "record"),
    ({"dialogue_id": "x", "domain": "d", "source": "s", "personas": {"a": "p"},
      "evaluated_speakers": ["a"], "lines": [{"speaker": "a", "text": "hi", "reward": math.inf}]},
     "lines.0.reward"),
    ({"dialogue_id": "x", "domain": "d", "personas": {"a": "p"}, "evaluated_speakers": ["a"],
      "lines": []}, "source"),
])
def test_schema_errors_name_the_field(tmp_path, record, field):
    from ppg.data.schema import DataError, read_dialogues

    src = tmp_path / "d.jsonl"
    src.write_text(json.dumps(record).replace("Infinity", "1e999") + "\n")
    with pytest.raises(DataError, match=f"field {field}"):
        read_dialogues(src)


def test_segments_from_meta_use_each_dialogues_starts_and_require_them(tmp_path):
    params = tmp_path / "params.yaml"
    params.write_text("returns:\n  policies: [greedy, segment]\n  segments: {from: meta.segment_starts}\n")
    lines = EXAMPLES.read_text().splitlines()
    src = tmp_path / "d.jsonl"
    src.write_text(lines[0] + "\n")  # therapy: meta.segment_starts {patient: [0, 2, 4]}
    out = tmp_path / "w.jsonl"
    res = runner.invoke(app, ["returns", str(src), "--params", str(params), "--out", str(out)])
    assert res.exit_code == 0, res.output
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert weights(rows, "ex-therapy-1", "patient", "segment") == [2, 1, 1, 1, 0]
    res = runner.invoke(app, ["returns", str(EXAMPLES), "--params", str(params)])
    assert res.exit_code == 2
    assert "dialogue 'ex-education-1': field meta.segment_starts: no entry for speaker 'student'" in res.output


def test_train_rejects_bad_policy_arguments_before_any_work():
    res = runner.invoke(app, ["train", "--policy", "kstep", "--k", "0"])
    assert res.exit_code == 2 and "k: --policy kstep needs --k K with K >= 1" in res.output
    res = runner.invoke(app, ["train", "--policy", "k0"])
    assert res.exit_code == 2 and "policy id 'k0'" in res.output


def test_simulate_command_and_the_simulator_import_source(tmp_path):
    res = runner.invoke(app, ["simulate", "--domain", "chatting", "--dialogues", "5", "--turns", "6", "--seed", "1",
                              "--out", str(tmp_path / "sim"), "--params", str(ROOT / "params.yaml")])
    assert res.exit_code == 0, res.output
    rows = [json.loads(x) for x in (tmp_path / "sim/dialogues.jsonl").read_text().splitlines()]
    assert len(rows) == 5 and rows[0]["source"] == "simulator" and rows[0]["meta"]["segment_starts"]["persona"][0] == 0
    summary = json.loads((tmp_path / "sim/summary.json").read_text())["total"]
    assert summary["judged_lines"] == 30 and 0 < summary["consistency"] <= 1 and 0 < summary["coverage"] <= 1
    params = tmp_path / "params.yaml"
    params.write_text("data:\n  source: simulator\nsim:\n  dialogues: 4\n  turns: 5\n")
    res = runner.invoke(app, ["import", "--out", str(tmp_path / "imp"), "--params", str(params)])
    assert res.exit_code == 0, res.output
    assert len((tmp_path / "imp/dialogues.jsonl").read_text().splitlines()) == 4
    res = runner.invoke(app, ["simulate", "--domain", "mars", "--out", str(tmp_path / "x")])
    assert res.exit_code == 2 and "domain: 'mars' is not one of" in res.output


def test_simulate_summary_uses_the_configured_judge(tmp_path):
    params = tmp_path / "params.yaml"
    params.write_text("sim:\n  evasive_reward: 0.2\n")
    res = runner.invoke(app, ["simulate", "--dialogues", "20", "--turns", "6", "--out", str(tmp_path / "s"),
                              "--params", str(params)])
    assert res.exit_code == 0, res.output
    rows = [json.loads(x) for x in (tmp_path / "s/dialogues.jsonl").read_text().splitlines()]
    rewards = [ln["reward"] for d in rows for ln in d["lines"] if ln["speaker"] == "persona"]
    assert 0.2 in rewards
    summary = json.loads((tmp_path / "s/summary.json").read_text())["total"]
    assert summary["reward"] == pytest.approx(sum(rewards) / len(rewards))
