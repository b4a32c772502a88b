"""The DVC stage graph: real `dvc` in a real git repo, stages calling the `ppg` CLI."""

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

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
    for rel in ("dvc.yaml", "params.yaml", "data/examples", "ppg"):
        src, dst = ROOT / rel, repo / rel
        if src.is_dir():
            shutil.copytree(src, dst, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(src, dst)
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
           "DVC_SITE_CACHE_DIR": str(tmp_path / "dvc-site"), "GIT_AUTHOR_NAME": "t",
           "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t"}
    sh("git", "init", "-q", cwd=repo, env=env)
    sh("dvc", "init", "-q", cwd=repo, env=env)
    shutil.copy(ROOT / ".dvc/config", repo / ".dvc/config")  # the project's default local remote
    out = sh("dvc", "repro", cwd=repo, env=env)
    for stage in ("import", "validate", "build"):
        assert f"Running stage '{stage}'" in out
    assert (repo / "data/built/train.parquet").exists() and (repo / "data/validation/report.md").exists()
    assert "didn't change" in sh("dvc", "repro", cwd=repo, env=env)
    # a build parameter reruns build only
    params = repo / "params.yaml"
    params.write_text(params.read_text().replace("  folds: 5", "  folds: 2"))
    out = sh("dvc", "repro", cwd=repo, env=env)
    assert "Running stage 'build'" in out and "Running stage 'import'" not in out
    # push to the default local remote, lose outputs and cache, pull them back unchanged
    before = {d: digest(repo / "data" / d) for d in ("imported", "validation", "built")}
    sh("dvc", "push", cwd=repo, env=env)
    assert (repo / ".dvc-remote").is_dir()
    for d in ("imported", "validation", "built"):
        shutil.rmtree(repo / "data" / d)
    shutil.rmtree(repo / ".dvc/cache")
    sh("dvc", "pull", cwd=repo, env=env)
    assert {d: digest(repo / "data" / d) for d in before} == before
