"""The DVC stage graph runs the real `dvc` in a real git repo and calls the `ppg` CLI."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def sh(*cmd, cwd, env):
    return subprocess.run(cmd, cwd=cwd, env=env, check=True, capture_output=True, text=True).stdout


def test_dvc_repro_runs_the_returns_stage_then_skips_it_until_params_change(tmp_path):
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
    sh("dvc", "repro", cwd=repo, env=env)
    out = repo / "data/returns/examples.jsonl"
    first = [json.loads(x) for x in out.read_text().splitlines()]
    assert len(first) == 15 and {"greedy", "k2", "k3", "full", "segment"} <= set(first[0])
    assert "returns" in (repo / "dvc.lock").read_text()
    assert "didn't change" in sh("dvc", "repro", cwd=repo, env=env)
    (repo / "params.yaml").write_text((repo / "params.yaml").read_text()
                                      .replace("baseline: none", "baseline: turn_mean"))
    assert "Running stage 'returns'" in sh("dvc", "repro", cwd=repo, env=env)
    second = [json.loads(x) for x in out.read_text().splitlines()]
    assert second[0]["full"] != first[0]["full"]  # the baselined weights replaced the raw ones
