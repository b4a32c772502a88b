"""Params files that cannot be read as the config tree: each is refused by `ppg run --params`
(and every command's --params) before Prefect starts or a stage runs, with one line naming the
file, the key and what was expected; params.yaml stays byte-identical. No traceback, and no YAML
alias is ever expanded."""

import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ppg.cli import app

ROOT = Path(__file__).resolve().parents[1]
BOMB = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{b}: &{b} [{', '.join(['*' + a] * 9)}]\n" for a, b in zip("abcdefgh", "bcdefghi")) + "train: {max_steps: *i}\n"

# (case, overlay bytes, what the one error line must say)
OVERLAYS = [
    ("a top-level list", b"- train\n- eval\n", "expected a mapping of sections (judge:, train:, ...) at the top"),
    ("tab indentation", b"train:\n\tmax_steps: 3\n", "line 2 column 1: not valid YAML"),
    ("a key given twice", b"train:\n  max_steps: 3\n  max_steps: 4\n",
     "line 3 column 3: not valid YAML: the key 'max_steps' appears twice in one mapping (first on line 2)"),
    ("a number in quotes", b"train:\n  max_steps: '10'\n", "train.max_steps: expected an integer, got str '10'"),
    ("a number YAML reads as text", b"judge:\n  backoff_s: 1e-3\n",
     "judge.backoff_s: expected a number, got str '1e-3' (a number in quotes, or written like 1e-3"),
    ("a list where a number belongs", b"train:\n  batch_size: [1, 2]\n",
     "train.batch_size: expected an integer, got list [1, 2]"),
    ("true where a number belongs", b"train:\n  max_steps: true\n", "train.max_steps: expected an integer, got bool"),
    ("a number where text belongs", b"model:\n  spec: 7\n", "model.spec: expected a string, got int 7"),
    ("a list of numbers where names belong", b"returns:\n  policies: [1, 2]\n",
     "returns.policies: expected a list of strings, got list [1, 2]"),
    ("a section that is not a mapping", b"train: 5\n", "train: expected a mapping, got int 5"),
    ("a misspelt section", b"trian:\n  max_steps: 3\n", "unknown key(s) 'trian'"),
    ("a YAML alias bomb", BOMB.encode(), "line 1 column 4: YAML anchors and aliases"),
    ("not UTF-8", b"model:\n  spec: \xff\xfe\n", "not UTF-8 at byte 15"),
]


@pytest.fixture
def workspace(tmp_path):
    shutil.copy(ROOT / "params.yaml", tmp_path / "params.yaml")
    return tmp_path


@pytest.mark.parametrize("case,overlay,says", OVERLAYS, ids=[c[0] for c in OVERLAYS])
def test_a_bad_overlay_is_refused_in_one_line_and_params_yaml_is_untouched(workspace, case, overlay, says):
    before = (workspace / "params.yaml").read_bytes()
    (workspace / "bad.yaml").write_bytes(overlay)
    res = CliRunner().invoke(app, ["run", "--workspace", str(workspace), "--params", str(workspace / "bad.yaml")])
    assert res.exit_code == 2, res.output
    lines = res.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), res.output
    assert says in lines[0] and str(workspace / "bad.yaml") in lines[0] and len(lines[0]) < 400, lines[0]
    assert (workspace / "params.yaml").read_bytes() == before


def test_params_yaml_itself_is_read_as_strictly(workspace):
    text = (workspace / "params.yaml").read_text()
    (workspace / "params.yaml").write_text(text + "\ntrain:\n  max_steps: 3\n")  # a second `train:` section
    res = CliRunner().invoke(app, ["run", "--workspace", str(workspace)])
    assert res.exit_code == 2 and "the key 'train' appears twice in one mapping" in res.output, res.output
    assert str(workspace / "params.yaml") in res.output and "Traceback" not in res.output


def test_a_good_overlay_with_a_float_written_with_a_dot_is_accepted(workspace):
    from ppg.overlay import merged_params

    (workspace / "ok.yaml").write_text("judge:\n  backoff_s: 1.0e-3\ntrain:\n  max_steps: 3\n")
    p = merged_params(workspace / "params.yaml", workspace / "ok.yaml")
    assert p.judge.backoff_s == 0.001 and p.train.max_steps == 3
