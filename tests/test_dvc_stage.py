"""The DVC stage graph: real `dvc` in a real git repo, stages calling the `ppg` CLI."""

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]


def sh(*cmd, cwd, env):
    res = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr
    return res.stdout


def digest(folder: Path) -> dict:
    return {str(p.relative_to(folder)): hashlib.md5(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.slow
def test_dvc_repro_push_pull_from_a_fresh_repo(tmp_path):
    repo = tmp_path / "repo"
    for rel in ("dvc.yaml", "params.yaml", "data/incoming", "ppg"):
        src, dst = ROOT / rel, repo / rel
        if src.is_dir():
            shutil.copytree(src, dst, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(src, dst)
    env = {k: v for k, v in os.environ.items()
           if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    env = {**env, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
           "DVC_SITE_CACHE_DIR": str(tmp_path / "dvc-site"), "GIT_AUTHOR_NAME": "t",
           "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t"}
    # the tiny model and a few steps: the graph is under test here, not the model
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["model"]["spec"] = "tiny"
    params["returns"]["policies"] = ["greedy", "k2"]
    params["train"].update(max_steps=2, batch_size=1)
    params["sim"].update(dialogues=60, turns=4)
    params["eval"].update(personas=2, turns=3, qa=False,
                          generation={"max_new_tokens": 4, "temperature": 0.0, "top_p": 1.0, "batch_size": 2})
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    sh("git", "init", "-q", cwd=repo, env=env)
    sh("dvc", "init", "-q", cwd=repo, env=env)
    shutil.copy(ROOT / ".dvc/config", repo / ".dvc/config")  # the project's default local remote
    out = sh("dvc", "repro", cwd=repo, env=env)
    for stage in ("prepare-model", "import", "judge", "validate", "build", "train@greedy", "train@k2",
                  "evaluate@greedy",
                  "evaluate@k2"):
        assert f"Running stage '{stage}'" in out
    assert (repo / "data/built/train.parquet").exists() and (repo / "data/validation/report.md").exists()
    run_json = json.loads((repo / "models/k2/run.json").read_text())
    assert run_json["steps"] == 2 and run_json["mlflow_run_id"]
    assert "didn't change" in sh("dvc", "repro", cwd=repo, env=env)
    # a build parameter reruns build only
    params = repo / "params.yaml"
    params.write_text(params.read_text().replace("  folds: 5", "  folds: 2"))
    out = sh("dvc", "repro", cwd=repo, env=env)
    assert "Running stage 'build'" in out and "Running stage 'import'" not in out
    assert "Running stage 'train@k2'" in out  # the folds column changed the built data
    # push to the default local remote, lose outputs and cache, pull them back unchanged
    outs = ["models/base", "data/imported", "data/judged", "data/validation", "data/built", "models/greedy",
            "models/k2",
            "eval/greedy", "eval/k2"]
    before = {d: digest(repo / d) for d in outs}
    sh("dvc", "push", cwd=repo, env=env)
    assert (repo / ".dvc-remote").is_dir()
    for d in outs:
        shutil.rmtree(repo / d)
    shutil.rmtree(repo / ".dvc/cache")
    sh("dvc", "pull", cwd=repo, env=env)
    assert {d: digest(repo / d) for d in outs} == before
    # every file data.source names is a dependency wherever it lives: an edit re-runs import
    logs = repo / "elsewhere/logs.jsonl"
    logs.parent.mkdir()
    shutil.copy(ROOT / "data/examples/dialogues.jsonl", logs)
    params.write_text(params.read_text().replace("source: simulator", "source: jsonl:elsewhere/logs.jsonl"))
    assert "Running stage 'import'" in sh("dvc", "repro", "import", cwd=repo, env=env)
    assert "Stage 'import' didn't change" in sh("dvc", "repro", "import", cwd=repo, env=env)
    logs.write_text("".join(logs.read_text().splitlines(keepends=True)[:-1]))  # one dialogue fewer
    assert "Running stage 'import'" in sh("dvc", "repro", "import", cwd=repo, env=env)
    manifest = json.loads((repo / "data/sources.json").read_text())
    assert [f["path"] for f in manifest["files"]] == ["elsewhere/logs.jsonl"]
