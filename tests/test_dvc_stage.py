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
           "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t",
           "PPG_TRACE_PARAMS": str(tmp_path / "params-read.jsonl")}
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
    every_stage_declares_the_params_it_read(repo, tmp_path / "params-read.jsonl")
    an_edit_reruns_the_stages_whose_code_closure_holds_it(repo, env)
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


def every_stage_declares_the_params_it_read(repo: Path, trace: Path):
    from ppg.lineage.closure import stage_command, stages
    from ppg.lineage.trace import declared, undeclared

    params = {stage_command(st["cmd"]): declared(st) for st in stages(repo / "dvc.yaml").values()}
    lines = [json.loads(x) for x in trace.read_text().splitlines()]
    assert {t["command"] for t in lines} >= {"prepare-model", "sources", "import", "judge", "validate", "build",
                                            "train", "evaluate", "evaluate-base"}
    assert undeclared(lines, params) == {}
    assert "train.max_steps" in next(t for t in lines if t["command"] == "train")["read"]  # the trace sees reads


def an_edit_reruns_the_stages_whose_code_closure_holds_it(repo: Path, env: dict):
    """dvc status after an edit lists exactly the stages whose command's import closure holds the
    edited file (the closure computed from the code, then pinned by hand)."""
    from ppg.lineage.closure import command_closure, files, stage_command, stages

    def changed():
        status = json.loads(sh("dvc", "status", "--json", cwd=repo, env=env))
        return {k for k, v in status.items() if v != ["always changed"]}

    graph = stages(repo / "dvc.yaml")
    expanded = {"train": ["train@greedy", "train@k2"], "evaluate": ["evaluate@greedy", "evaluate@k2"]}
    # prepare-model holds the trainer too: it builds the K study's base (model.spec sim-base)
    for rel, pinned in (("ppg/generation.py", {"train@greedy", "train@k2", "evaluate@greedy", "evaluate@k2",
                                              "evaluate-base", "prepare-model"}),
                        ("ppg/data/validate.py", {"validate"})):
        holds = {s for name, st in graph.items() if stage_command(st["cmd"])
                 and rel in files(command_closure(stage_command(st["cmd"]))) for s in expanded.get(name, [name])}
        assert holds == pinned
        f = repo / rel
        before = f.read_text()
        f.write_text(before.replace("def ", "def _edited():\n    return 1\n\n\ndef ", 1))
        assert changed() == holds, rel
        f.write_text(before)
        assert changed() == set()


def test_the_run_follows_dvc_yaml_only_in_an_order_where_every_stage_comes_after_its_upstream(tmp_path,
                                                                                                monkeypatch):
    """The pipeline repros each stage alone (`dvc repro -s`), in dvc.yaml's written order: the
    same as DVC's own walk only if that order puts every stage after those it depends on. The
    shipped dvc.yaml does; one written upside down is refused, naming the edge."""
    from flows.pipeline import StageFailed, upstream_first
    from ppg.lineage.closure import stage_order

    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
           "DVC_SITE_CACHE_DIR": str(tmp_path / "dvc-site")}
    for name in ("shipped", "upside-down"):
        (tmp_path / name).mkdir()
        sh("git", "init", "-q", cwd=tmp_path / name, env=env)
        sh("dvc", "init", "-q", cwd=tmp_path / name, env=env)
    for rel in ("dvc.yaml", "params.yaml"):
        shutil.copy(ROOT / rel, tmp_path / "shipped" / rel)
    (tmp_path / "upside-down" / "dvc.yaml").write_text(
        "stages:\n  counted:\n    cmd: wc -l words.txt > count.txt\n    deps: [words.txt]\n    outs: [count.txt]\n"
        "  words:\n    cmd: echo a b > words.txt\n    outs: [words.txt]\n")
    monkeypatch.setenv("DVC_SITE_CACHE_DIR", env["DVC_SITE_CACHE_DIR"])
    monkeypatch.chdir(tmp_path / "shipped")
    policies = yaml.safe_load((ROOT / "params.yaml").read_text())["returns"]["policies"]
    upstream_first(["sources", *stage_order(Path("dvc.yaml"), policies, done=("sources",))])
    monkeypatch.chdir(tmp_path / "upside-down")
    with pytest.raises(StageFailed, match="depends on a later stage: words -> counted"):
        upstream_first(stage_order(Path("dvc.yaml"), []))
    with pytest.raises(StageFailed, match="not run: words"):
        upstream_first(["counted"])
