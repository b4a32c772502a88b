"""Lineage: each DVC stage depends on the code it runs (its command's import closure, read from the
source), and the record of a run says which code, config and environment made an output. The
end-to-end rebuild of a registered version is in test_pipeline (it reuses that workspace)."""

import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_every_stage_depends_on_the_code_it_runs():
    from ppg.lineage.closure import uncovered

    assert uncovered(ROOT / "dvc.yaml") == {}


def test_the_closure_is_the_stage_commands_not_the_whole_package():
    from ppg.lineage.closure import command_closure, files

    train, imp = files(command_closure("train")), files(command_closure("import"))
    # function-level imports count: the train command imports the online trainer inside its body,
    # which imports the generation code; build's weights are reshaped at training time (returns)
    assert {"ppg/train/online.py", "ppg/generation.py", "ppg/returns.py", "ppg/data/turns.py"} <= set(train)
    # reading params does not import generation or torch code, so import and validate do not rerun
    assert "ppg/generation.py" not in imp and "ppg/data/validate.py" not in imp
    assert "ppg/registry.py" not in train  # another command's import (register) is not train's


def make_package(root: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    return root


def test_closure_follows_helpers_function_level_and_relative_imports(tmp_path):
    from ppg.lineage.closure import as_deps, command_closure, files

    root = make_package(tmp_path, {
        "ppg/__init__.py": "",
        "ppg/cli/__init__.py": "from ppg.cli import cmds  # noqa\nfrom ppg.cli.app import app\n",
        "ppg/cli/app.py": "import typer\napp = typer.Typer()\n\ndef read_params():\n    from ppg.config import load\n"
                          "    return load()\n",
        "ppg/cli/cmds.py": "from ppg.cli.app import app, read_params\n\n\n"
                           "def _helper():\n    from ppg.train import run\n\n\n"
                           "@app.command()\ndef train_model():\n    read_params()\n    _helper()\n\n\n"
                           "@app.command('other')\ndef other():\n    import ppg.heavy\n\n\n"
                           "@app.command(name='named')\ndef third():\n    import ppg.unused\n",
        "ppg/config.py": "X = 1\n",
        "ppg/train/__init__.py": "",
        "ppg/train/run.py": "def f():\n    from . import helper\n    from .deep.leaf import g\n",
        "ppg/train/helper.py": "from ppg.config import X\n",
        "ppg/train/deep/__init__.py": "",
        "ppg/train/deep/leaf.py": "def g():\n    pass\n",
        "ppg/heavy.py": "",
        "ppg/unused.py": "",
    })
    got = files(command_closure("train-model", root), root)
    assert got == ["ppg/__init__.py", "ppg/cli/__init__.py", "ppg/cli/app.py", "ppg/cli/cmds.py", "ppg/config.py",
                   "ppg/train/__init__.py", "ppg/train/deep/__init__.py", "ppg/train/deep/leaf.py",
                   "ppg/train/helper.py", "ppg/train/run.py"]
    assert "ppg/heavy.py" in files(command_closure("other", root), root)
    assert "ppg/unused.py" in files(command_closure("named", root), root)
    # a folder is named once when every module under it runs, else file by file
    assert as_deps(got, root) == ["ppg/__init__.py", "ppg/cli", "ppg/config.py", "ppg/train"]
    assert as_deps([g for g in got if g != "ppg/train/helper.py"], root)[-3:] == [
        "ppg/train/__init__.py", "ppg/train/deep", "ppg/train/run.py"]
    with pytest.raises(KeyError, match="no such command"):
        command_closure("nope", root)


def test_stage_command_reads_plain_and_launcher_forms():
    from ppg.lineage.closure import stage_command

    assert stage_command("ppg evaluate --policy ${item}") == "evaluate"
    assert stage_command("${train.launcher} $(command -v ppg) train --policy ${item}") == "train"
    assert stage_command("python other.py") is None


def test_a_param_is_declared_by_params_or_by_an_interpolated_path():
    from ppg.lineage.trace import declared, undeclared

    stage = {"cmd": "ppg build --out ${build.out}", "deps": ["${model.base}"], "params": ["returns.gamma"]}
    have = declared(stage)
    assert set(have) == {"returns.gamma", "build.out", "model.base"}
    trace = [{"command": "build", "read": ["build.out", "model.base", "model.spec", "mlflow.tracking_uri",
                                           "returns.gamma"]},
             {"command": "not-a-stage", "read": ["x.y"]}]
    assert undeclared(trace, {"build": have}) == {"build": ["model.spec"]}  # mlflow: bookkeeping


def git(*args, cwd):
    subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True,
                   env={"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
                        "GIT_COMMITTER_EMAIL": "t@t", "PATH": "/usr/bin:/bin"})


def test_code_state_records_the_code_diff_but_not_params_or_the_lock(tmp_path):
    from ppg.lineage.record import code_state

    (tmp_path / "code.py").write_text("x = 1\n")
    (tmp_path / "params.yaml").write_text("a: 1\n")
    (tmp_path / "data").mkdir()
    (tmp_path / "data/.gitignore").write_text("/built\n")
    git("init", "-q", cwd=tmp_path)
    git("add", "-A", cwd=tmp_path)
    git("commit", "-qm", "c", cwd=tmp_path)
    (tmp_path / "params.yaml").write_text("a: 2\n")  # recorded whole, not as code
    (tmp_path / "data/.gitignore").write_text("/built\n/judged\n")
    code, diff = code_state(tmp_path)
    assert code["commit"] and not code["dirty"] and diff == "" and not code["pushed"]
    (tmp_path / "code.py").write_text("x = 2\n")
    code, diff = code_state(tmp_path)
    assert code["dirty"] and "+x = 2" in diff and "params.yaml" not in diff and code["diff_bytes"] == len(diff)
    (tmp_path / "code.py").write_text("x = 1\n")
    (tmp_path / "ppg").mkdir()
    (tmp_path / "ppg/new.py").write_text("y = 3\n")  # new code a stage may import, not yet added
    code, diff = code_state(tmp_path)
    assert code["dirty"] and "+y = 3" in diff and "ppg/new.py" in code["untracked"]
    assert len(code["code_hash"]) == 16  # the package this process imported


def test_the_dvc_remote_is_recorded_by_an_address_any_clone_reaches(tmp_path):
    from ppg.lineage.record import dvc_remote

    (tmp_path / ".dvc").mkdir()
    (tmp_path / ".dvc/config").write_text("[core]\n    remote = local\n['remote \"local\"']\n    url = ../.dvc-remote\n"
                                          "['remote \"s3\"']\n    url = s3://bucket/ppg\n")
    assert dvc_remote(tmp_path) == {"name": "local", "url": str((tmp_path / ".dvc-remote").resolve())}
    (tmp_path / ".dvc/config.local").write_text("[core]\n    remote = s3\n")
    assert dvc_remote(tmp_path) == {"name": "s3", "url": "s3://bucket/ppg"}


def test_weights_compare_by_sha256_and_by_the_largest_difference(tmp_path):
    import torch
    from safetensors.torch import save_file

    from ppg.lineage.reproduce import max_abs_diff, weight_files

    for name, bump in (("a", 0.0), ("b", 0.0), ("c", 0.25)):
        (tmp_path / name).mkdir()
        w = torch.arange(6.0).reshape(2, 3) + torch.tensor([0, 0, bump])
        save_file({"w": w}, tmp_path / name / "m.safetensors")
    a, b, c = (tmp_path / x for x in "abc")
    assert weight_files(a) == weight_files(b) != weight_files(c)
    assert max_abs_diff(a, b) == 0.0 and max_abs_diff(a, c) == 0.25


def test_a_dirty_tree_is_rebuilt_as_it_ran_from_its_commit_and_recorded_diff(tmp_path):
    from ppg.lineage.record import code_state
    from ppg.lineage.reproduce import ReproduceError, checkout

    ws, into = tmp_path / "ws", tmp_path / "into"
    ws.mkdir()
    into.mkdir()
    (ws / "code.py").write_text("x = 1\n")
    git("init", "-q", cwd=ws)
    git("add", "-A", cwd=ws)
    git("commit", "-qm", "c", cwd=ws)
    (ws / "code.py").write_text("x = 2\n")  # ran uncommitted
    code, diff = code_state(ws)
    (ws / "code.py").write_text("x = 3\n")  # and changed again since
    checkout(code["commit"], diff, into, repo=ws)
    assert (into / "code.py").read_text() == "x = 2\n" and (into / ".git").is_dir()
    with pytest.raises(ReproduceError, match="is not in the git repository"):
        checkout("0" * 40, "", tmp_path / "elsewhere", repo=ws)


def test_a_version_without_a_complete_record_is_refused_with_the_reason(tmp_path):
    from mlflow import MlflowClient

    from ppg.lineage.reproduce import ReproduceError, reproduce

    c = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    exp = c.create_experiment("ppg", artifact_location=(tmp_path / "art").as_uri())
    parent = c.create_run(exp).info.run_id
    c.log_text(parent, "{}", "lineage/code.json")  # a run that died before its stages finished
    c.create_registered_model("ppg-x")
    bare = c.create_model_version("ppg-x", (tmp_path / "m").as_uri()).version
    made = c.create_model_version("ppg-x", (tmp_path / "m").as_uri(),
                                  tags={"ppg.parent_run_id": parent, "ppg.policy": "k3"}).version
    with pytest.raises(ReproduceError, match="has no record"):
        reproduce(c, "ppg-x", bare, tmp_path / "a")
    with pytest.raises(ReproduceError, match="lacks environment.json, params.yaml, dvc.lock"):
        reproduce(c, "ppg-x", made, tmp_path / "b")
    assert not (tmp_path / "b").exists()  # nothing half-built
