"""One source of defaults: params.yaml names every config field, with the value its dataclass
gives when a tree leaves it out (so a test's Params(...) and `make run` start from the same place)."""

import dataclasses
from pathlib import Path

import yaml

from ppg.config import Params

ROOT = Path(__file__).resolve().parents[1]


def test_params_yaml_names_every_field_with_its_dataclass_default():
    written = yaml.safe_load((ROOT / "params.yaml").read_text())
    missing, differ = [], []

    def walk(obj, node, prefix):
        for f in dataclasses.fields(obj):
            value, key = getattr(obj, f.name), f"{prefix}{f.name}"
            if not isinstance(node, dict) or f.name not in node:
                missing.append(key)
            elif dataclasses.is_dataclass(value):
                walk(value, node[f.name], key + ".")
            elif node[f.name] != value:
                differ.append(f"{key}: dataclass {value!r}, params.yaml {node[f.name]!r}")

    walk(Params(), written, "")
    assert missing == [] and differ == []


def test_a_pipeline_stage_refuses_a_missing_params_file_other_commands_use_the_defaults(tmp_path):
    from typer.testing import CliRunner

    from ppg.cli import app

    missing = tmp_path / "params.yaml"
    for stage in (["import", "--out", str(tmp_path / "x")], ["build", str(tmp_path)], ["train", "--policy", "k3"],
                  ["evaluate", "--policy", "k3"], ["validate", str(tmp_path)], ["sources"], ["judge", str(tmp_path)],
                  ["prepare-model"], ["evaluate-base"]):
        r = CliRunner().invoke(app, [*stage, "--params", str(missing)])
        assert r.exit_code == 2 and f"{missing}: no such params file" in r.output, (stage, r.output)
    dialogues = ROOT / "data" / "examples" / "dialogues.jsonl"
    r = CliRunner().invoke(app, ["returns", str(dialogues), "--params", str(missing)])
    assert r.exit_code == 0, r.output  # not a stage: the defaults
