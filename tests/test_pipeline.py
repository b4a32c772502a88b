"""The product path: the Prefect flow over real `dvc` in a real git repo, the real MLflow registry
(SQLite), a real deployment served by `ppg serve`, the promotion gate and the workspace lock.
One workspace and one Prefect test server for the whole lifecycle (tiny model, 2 policies)."""

import json
import os
import shutil
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest
import yaml
from judge_server import FlakyJudge

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
SECRET = "sk-pipeline-DO-NOT-LEAK-1234567890"  # the judge API key: must reach the judge and nothing else
STRIP = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "MLFLOW_TRACKING_URI", "PPG_PARENT_RUN_ID")


def write_incoming(ws: Path, name: str, seed: int, n: int = 120, null_rewards: bool = False):
    from ppg.config import SimConfig
    from ppg.data.schema import write_dialogues
    from ppg.sim.simulate import simulate

    ds = simulate("chatting", n, 4, seed, SimConfig())
    if null_rewards:  # parses, but fails the validation gate (null-verdict share)
        for d in ds:
            for ln in d.lines:
                if ln.speaker in d.evaluated_speakers:
                    ln.reward = None
    write_dialogues(ws / "data/incoming" / name, ds)


def set_params(ws: Path, **sections):
    path = ws / "params.yaml"
    p = yaml.safe_load(path.read_text())
    for sec, values in sections.items():
        p[sec].update(values)
    path.write_text(yaml.safe_dump(p, sort_keys=False))


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """Environment of the workspace processes (the serve runner, CLI calls)."""
    tmp = tmp_path_factory.mktemp("pipeline-env")
    e = {k: v for k, v in os.environ.items() if k not in STRIP}
    e.update(PATH=f"{BIN}{os.pathsep}{os.environ['PATH']}", DVC_SITE_CACHE_DIR=str(tmp / "dvc-site"),
             PPG_JUDGE_API_KEY=SECRET,
             GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@t", GIT_COMMITTER_NAME="t", GIT_COMMITTER_EMAIL="t@t")
    for k in STRIP:
        os.environ.pop(k, None)
    os.environ.update(DVC_SITE_CACHE_DIR=e["DVC_SITE_CACHE_DIR"], PATH=e["PATH"], PPG_JUDGE_API_KEY=SECRET)
    yield e
    os.environ.pop("PPG_JUDGE_API_KEY", None)


@pytest.fixture(scope="module")
def judge():
    """The LLM judge the evaluate stage calls (eval.llm_judge), with the key from the environment."""
    return FlakyJudge(healthy=10 ** 9)


@pytest.fixture(scope="module")
def ws(tmp_path_factory, env, judge) -> Path:
    ws = tmp_path_factory.mktemp("workspace")
    for rel in ("dvc.yaml", "params.yaml", "params.tiny.yaml", ".dvcignore", "data/incoming/README.md", "ppg"):
        src, dst = ROOT / rel, ws / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        if src.is_dir():
            shutil.copytree(src, dst, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(src, dst)
    for cmd in (["git", "init", "-q"], ["dvc", "init", "-q"]):
        subprocess.run(cmd, cwd=ws, env=env, check=True)
    shutil.copy(ROOT / ".dvc/config", ws / ".dvc/config")
    from ppg.overlay import apply_overlay

    apply_overlay(ws / "params.yaml", ws / "params.tiny.yaml")
    set_params(ws, data={"source": "jsonl:data/incoming"}, returns={"policies": ["k3", "bc"]},  # a policy, a control
               train={"max_steps": 20, "batch_size": 8, "checkpoint_every": 10},
               eval={"personas": 4, "turns": 4, "generation": {"max_new_tokens": 8, "temperature": 0.0,
                                                               "top_p": 1.0, "batch_size": 4},
                     "llm_judge": True},
               judge={"base_url": judge.url, "model": "judge", "retries": 1, "backoff_s": 0.01, "timeout_s": 10},
               # this workspace tests the lifecycle: its 20 steps move no policy away from the base
               registry={"thresholds": {"online.reward": 0.0}, "margin": 0.0, "personas": 6, "min_pairs": 6,
                         "require_better_than_base": False})
    write_incoming(ws, "batch-000.jsonl", seed=0)
    # the first run merges this overlay (new training and data-split seeds): the record keeps it
    (ws / "params.seeds.yaml").write_text("train: {seed: 7}\nbuild: {seed: 3}\n")
    # the code is committed first, as in a real workspace: a registered version names that commit
    subprocess.run(["git", "add", "dvc.yaml", "params.yaml", "params.tiny.yaml", ".dvcignore", ".dvc", "ppg",
                    "data/incoming/README.md"], cwd=ws, env=env, check=True)
    subprocess.run(["git", "commit", "-qm", "the workspace's code and config"], cwd=ws, env=env, check=True)
    return ws


def weights(ws: Path, policy: str) -> str:
    from ppg.io import content_hash

    return content_hash(*(ws / "models" / policy).glob("*.safetensors"))


def registry_state(ws: Path, name: str = "ppg-chatting"):
    from mlflow import MlflowClient

    c = MlflowClient(f"sqlite:///{ws}/mlflow/mlflow.db")
    versions = sorted(int(v.version) for v in c.search_model_versions(f"name='{name}'"))
    aliases = c.get_registered_model(name).aliases if versions else {}
    return c, versions, {k: str(v) for k, v in aliases.items()}


@pytest.mark.slow
def test_pipeline_lifecycle(ws, env, judge, prefect_api):
    from flows.pipeline import ppg_pipeline

    # 1. first run: every stage runs, the best policy is registered and (thresholds pass, no
    #    champion yet) promoted
    code_commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ws, capture_output=True, text=True).stdout.strip()
    with warnings.catch_warnings(record=True) as caught:  # registration in this process, warnings unfiltered
        warnings.simplefilter("always")
        r = ppg_pipeline(workspace=str(ws), overlay=str(ws / "params.seeds.yaml"))
    assert [str(w.message) for w in caught if issubclass(w.category, FutureWarning)
            and any(x in str(w.message) for x in ("ChatModel", "ResponsesAgent"))] == []  # no deprecated interface
    assert not r["skipped"] and r["trained"] == {"k3": True, "bc": True}
    assert r["gate"]["promoted"] and r["champion"]["version"] == "1"
    assert r["gate"]["difference"] is None and "no champion yet" in r["why"]  # the thresholds decided
    first_runs, first_weights = dict(r["runs"]), {pol: weights(ws, pol) for pol in r["runs"]}
    first_parent = r["parent_run_id"]
    c, versions, aliases = registry_state(ws)
    assert versions == [1] and aliases == {"champion": "1", "challenger": "1"}
    parent = c.get_run(r["parent_run_id"])
    assert parent.info.status == "FINISHED" and parent.data.tags["ppg.best_policy"] == r["best"]
    # what the run cost, step by step, in the result and the parent run
    steps = ["sources", "prepare-model", "import", "judge", "validate", "build", "train@k3", "train@bc",
             "start ppg warm", "evaluate@k3", "evaluate@bc", "evaluate-base", "register + gate", "dvc push",
             "git commit"]
    assert list(r["stage_seconds"]) == steps and all(s >= 0 for s in r["stage_seconds"].values())
    # the evaluations ran in children of one warm process (the rebuild below evaluates cold: the
    # same metrics)
    assert [w.split(" exited ")[0] for w in r["warm"]] == ["evaluate --policy k3", "evaluate --policy bc",
                                                          "evaluate-base"]
    assert all(" exited 0 " in w for w in r["warm"]), r["warm"]
    assert parent.data.metrics["seconds.train.k3"] == pytest.approx(r["stage_seconds"]["train@k3"], abs=0.1)
    assert parent.data.metrics["seconds.register_gate"] > 0
    for policy, run_id in r["runs"].items():  # one child run per policy, tagged and evaluated
        child = c.get_run(run_id)
        assert child.data.tags["mlflow.parentRunId"] == r["parent_run_id"]
        assert child.data.tags["ppg.policy"] == policy and child.data.tags["ppg.dataset_md5"].endswith(".dir")
        assert child.data.tags["ppg.k"] == ("3" if policy == "k3" else "")
        assert 0.0 <= child.data.metrics["validation.online.reward"] <= 1.0
        assert child.data.metrics["validation.online.llm.consistency"] == 1.0  # the LLM judge said NO throughout
    assert "| k3 |" in r["table"]
    assert "| base (untrained, control) |" in r["table"] and "| bc (reward-free, control) |" in r["table"]
    words = r["table"].split("\n\n")[1]  # above the table: no policy differs from either control, in words
    assert words.splitlines()[:2] == [
        "No policy's interval against the untrained base clears 0 on `online.reward`: on this evidence, training "
        "changed nothing measurable.",
        "No policy's interval against bc, the reward-free control clears 0 on `online.reward`: on this evidence, "
        "the rewards added nothing measurable over plain fine-tuning on the same turns."]
    assert r["better_than_base"] == [] and r["best"] == "k3"  # bc is never a candidate
    assert (ws / "eval" / "policies.png").stat().st_size > 10_000  # eval.primary per policy and control, plotted
    assert "policies.png" in [a.path for a in c.list_artifacts(r["parent_run_id"])]
    the_run_is_recorded(ws, c, r, code_commit)
    assert (ws / ".dvc-remote").is_dir()  # outputs pushed to the default local remote
    # the champion loads from the registry and generates
    from ppg.config import load_params
    from ppg.registry import load_registered

    p = load_params(ws / "params.yaml")
    p.mlflow.tracking_uri = f"sqlite:///{ws}/mlflow/mlflow.db"
    model, tok = load_registered(p, "models:/ppg-chatting@champion")
    assert "MLFLOW_TRACKING_URI" not in os.environ  # nothing leaks into later subprocesses
    ids = tok("I am Maya.", return_tensors="pt").input_ids
    assert model.generate(ids, min_new_tokens=3, max_new_tokens=3, do_sample=False).shape[1] == ids.shape[1] + 3

    # 2. nothing changed: dvc status is clean, training is skipped, nothing registered
    r = ppg_pipeline(workspace=str(ws))
    assert r["skipped"] and r["gate"] is None and registry_state(ws)[1] == [1]

    # 3. another run holds the workspace: fail cleanly after the timeout, then wait for it
    holder = subprocess.Popen([sys.executable, "-c", "import time; from ppg.lock import workspace_lock\n"
                               "with workspace_lock(10, what='holder'):\n print('held', flush=True); time.sleep(4)"],
                              cwd=ws, env=env, stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    set_params(ws, pipeline={"lock_timeout": 1})
    from ppg.lock import LockTimeout

    with pytest.raises(LockTimeout, match="holder"):
        ppg_pipeline(workspace=str(ws))
    set_params(ws, pipeline={"lock_timeout": 60})
    t0 = time.monotonic()
    assert ppg_pipeline(workspace=str(ws))["skipped"]  # waited for the holder, then ran
    assert time.monotonic() - t0 > 1 and holder.wait(10) == 0
    assert registry_state(ws)[2]["champion"] == "1"

    # 4. a new incoming file, through the served deployment: import -> ... -> gate; a margin no
    #    challenger can beat blocks promotion and the champion stays
    from prefect.deployments import run_deployment

    set_params(ws, registry={"margin": 1.0})
    write_incoming(ws, "batch-001.jsonl", seed=1)
    from ppg.config import load_params

    name = load_params(ws / "params.yaml").pipeline.deployment_name(ws)  # what `ppg serve` serves
    assert name.startswith("scheduled-")
    dep = ppg_pipeline.to_deployment(name=name, cron="0 3 * * *", parameters={"workspace": str(ws)})
    assert dep.apply()
    runner = subprocess.Popen([str(BIN / "ppg"), "serve", "--workspace", str(ws)], cwd=ws,
                              env={**env, "PREFECT_API_URL": prefect_api, "PREFECT_RUNNER_POLL_FREQUENCY": "1"},
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        run = run_deployment(f"ppg-pipeline/{name}", timeout=400)
        assert run.state.is_completed(), run.state
    finally:
        runner.terminate()
        out = runner.communicate(timeout=30)[0]
    assert f"serving ppg-pipeline/{name} on cron '0 3 * * *'" in out
    c, versions, aliases = registry_state(ws)
    assert versions == [1, 2] and aliases == {"champion": "1", "challenger": "2"}
    assert c.get_model_version("ppg-chatting", "2").tags["ppg.gate"].startswith("blocked: ")
    # new data retrained every policy into a NEW run with its own loss history and new weights,
    # and the registered version points at that new run
    for pol, old_run in first_runs.items():
        new_run = json.loads((ws / "models" / pol / "run.json").read_text())["mlflow_run_id"]
        assert new_run != old_run and weights(ws, pol) != first_weights[pol], pol
        assert max(m.step for m in c.get_metric_history(new_run, "loss")) == 20
    v2 = c.get_model_version("ppg-chatting", "2")
    assert v2.tags["ppg.run_id"] == json.loads(
        (ws / "models" / v2.tags["ppg.policy"] / "run.json").read_text())["mlflow_run_id"]
    [last] = c.search_runs([c.get_experiment_by_name("ppg").experiment_id], "tags.`ppg.stage` = 'pipeline'",
                           order_by=["attributes.start_time DESC"], max_results=1)
    gate_json = json.loads(Path(c.download_artifacts(last.info.run_id, "gate.json", str(ws.parent))).read_text())
    diff = gate_json["decision"]["difference"]  # the paired comparison on freshly drawn test personas
    assert set(diff) == {"mean", "lo", "hi", "n", "method"} and diff["n"] == 6 and diff["method"] == "sign_flip"
    before = json.loads(Path(c.download_artifacts(first_parent, "gate.json", str(ws.parent / "g1"))).read_text())
    assert gate_json["decision"]["test_seed"] != before["decision"]["test_seed"]  # fresh test personas
    assert "interval" in gate_json["decision"]["reason"]

    # 5. bad data: the run fails at validation, before training; nothing registered
    write_incoming(ws, "batch-002.jsonl", seed=2, null_rewards=True)
    from flows.pipeline import StageFailed

    with pytest.raises(StageFailed, match="stage validate failed"):
        ppg_pipeline(workspace=str(ws))
    assert registry_state(ws)[1:] == ([1, 2], {"champion": "1", "challenger": "2"})

    # 6. by hand: promote v2, roll back to v1
    from ppg.config import load_params
    from ppg.registry import promote, rollback

    os.chdir(ws)
    try:
        p = load_params()
        promote(p, "ppg-chatting", "2")
        assert registry_state(ws)[2]["champion"] == "2"
        assert rollback(p, "ppg-chatting") == "1" and registry_state(ws)[2]["champion"] == "1"
        with pytest.raises(ValueError, match="no earlier champion"):
            rollback(p, "ppg-chatting")
    finally:
        os.chdir(ROOT)

    # 7. the judge API key reached the judge (as the Authorization header) and nothing else: not
    #    the Prefect logs of any run above, nor a file of the workspace (MLflow store and
    #    artifacts, DVC cache and remote, evaluation outputs, reports, models)
    assert judge.state["n"] > 0 and set(judge.state["auth"]) == {f"Bearer {SECRET}"}
    from prefect.client.orchestration import get_client

    logs = []
    with get_client(sync_client=True) as client:
        while batch := client.read_logs(offset=len(logs), limit=200):
            logs += batch
    assert any("dvc repro" in (x.message or "") or "evaluate" in (x.message or "") for x in logs)
    assert not [x.message for x in logs if SECRET in (x.message or "")]
    for f in (x for x in ws.rglob("*") if x.is_file() and ".git" not in x.parts):
        assert SECRET.encode() not in f.read_bytes(), f

    # 8. nothing looks alive: every run of the workspace ended (FINISHED, FAILED or KILLED)
    c = registry_state(ws)[0]
    assert c.search_runs([c.get_experiment_by_name("ppg").experiment_id], "attributes.status = 'RUNNING'") == []


def served_logs(folder: Path, name: str, seed: int, contradict: float, version: str = "ppg-chatting/1"):
    """Simulated chatting dialogues as a deployed model's logs: meta.model_version names it;
    contradict = the share of its turns whose logged verdict says it contradicted its persona."""
    import random

    from ppg.config import SimConfig
    from ppg.data.schema import write_dialogues
    from ppg.sim.simulate import simulate

    rng, ds = random.Random(seed), simulate("chatting", 40, 4, seed, SimConfig())
    for d in ds:
        d.meta["model_version"] = version
        d.dialogue_id = d.dialogue_id.replace("sim-", "served-")
        for ln in d.turns("persona"):
            ln.reward = 0.0 if rng.random() < contradict else 1.0
    write_dialogues(folder / name, ds)


@pytest.mark.slow
def test_the_monitor_stays_quiet_on_good_logs_and_retrains_on_drifted_ones(ws, env):
    """ppg monitor on the pipeline's workspace: consistent logs -> within bounds, nothing runs;
    logs with injected contradictions -> the rule fires, they become training data, and the
    pipeline retrains and gates a new challenger."""
    bad = ws / "data/incoming/batch-002.jsonl"
    if bad.exists():  # the lifecycle's bad batch would stop any later run at validation
        bad.unlink()
    logs = ws.parent / "served-logs"
    served_logs(logs, "monday.jsonl", seed=21, contradict=0.02)
    c, before, _ = registry_state(ws)
    cmd = [str(BIN / "ppg"), "monitor", "--logs", str(logs), "--workspace", str(ws)]
    quiet = subprocess.run(cmd, cwd=ws, env=env, capture_output=True, text=True, timeout=300)
    assert quiet.returncode == 0, quiet.stderr[-3000:]
    assert "ppg-chatting/1: reward" in quiet.stdout and "within bounds" in quiet.stdout
    assert not list((ws / "data/incoming").glob("monitor-*")) and registry_state(ws)[1] == before
    served_logs(logs, "tuesday.jsonl", seed=22, contradict=0.3)
    drift = subprocess.run(cmd, cwd=ws, env=env, capture_output=True, text=True, timeout=900)
    assert drift.returncode == 0, drift.stderr[-3000:]
    assert "below the baseline" in drift.stdout and "DRIFT: retrained" in drift.stdout
    [moved] = (ws / "data/incoming").glob("monitor-*.jsonl")
    from ppg.data.schema import read_dialogues

    served = read_dialogues(logs / "tuesday.jsonl")
    assert {d.dialogue_id for d in read_dialogues(moved)} == {d.dialogue_id for d in served}
    c, after, aliases = registry_state(ws)
    assert after == before + [max(before, default=0) + 1]  # retrained on the new data and registered
    assert aliases["challenger"] == str(after[-1])
    assert c.get_model_version("ppg-chatting", str(after[-1])).tags["ppg.gate"]  # and the gate decided


def the_run_is_recorded(ws: Path, c, r: dict, code_commit: str):
    """The parent run's record (params, overlay, lock, code, environment), each training run's
    datasets, the version's tags, and the workspace's commit of dvc.lock + params.yaml."""
    import yaml as y

    from ppg.lineage.record import dvc_md5

    parent = r["parent_run_id"]
    names = {Path(a.path).name for a in c.list_artifacts(parent, "lineage")}
    assert names >= {"params.yaml", "overlay.yaml", "dvc.lock", "sources.json", "models.json", "code.json",
                     "environment.json", "packages.txt"} and "code.diff" not in names  # committed, clean tree
    code = json.loads(Path(c.download_artifacts(parent, "lineage/code.json", str(ws.parent))).read_text())
    assert code["commit"] == code_commit and not code["dirty"] and code["dvc_remote"]["url"] == str(ws / ".dvc-remote")
    params = y.safe_load(Path(c.download_artifacts(parent, "lineage/params.yaml", str(ws.parent))).read_text())
    assert params["train"]["seed"] == 7 and params["build"]["seed"] == 3
    for run_id in r["runs"].values():  # MLflow's own API lists which data trained which run
        inputs = {d.dataset.name: d.dataset for d in c.get_run(run_id).inputs.dataset_inputs}
        assert set(inputs) == {"data/built", "models/base"}
        assert inputs["data/built"].digest == dvc_md5("data/built", ws / "dvc.lock")[:36]
        assert json.loads(inputs["data/built"].source)["remote"] == str(ws / ".dvc-remote")
    head = subprocess.run(["git", "log", "-1", "--format=%H %s"], cwd=ws, capture_output=True, text=True).stdout
    assert head.split()[0] == r["workspace_commit"] and f"ppg run {parent}: promoted v1" in head
    assert subprocess.run(["git", "status", "--porcelain", "dvc.lock", "params.yaml"], cwd=ws, capture_output=True,
                          text=True).stdout == ""
    assert "ppg/ppg-chatting/v1" in subprocess.run(["git", "tag", "--points-at", r["workspace_commit"]], cwd=ws,
                                                   capture_output=True, text=True).stdout
    tags = c.get_model_version("ppg-chatting", "1").tags
    assert tags["ppg.record"] == f"runs:/{parent}/lineage" and tags["ppg.git_commit"] == code_commit
    assert tags["ppg.workspace_commit"] == r["workspace_commit"] and tags["ppg.steps"] == "20"


@pytest.mark.slow
def test_a_registered_version_is_rebuilt_from_its_record_alone(ws, env, tmp_path):
    """After the lifecycle and the monitor, v1 (the first run, with the seeds overlay) is rebuilt
    from a fresh clone, with the workspace's outputs, DVC cache and checkpoints gone and its
    params.yaml reset: trained anew into a new run, bit-identical, the same metrics."""
    for rel in ("data/imported", "data/judged", "data/validation", "data/built", "models", "eval", ".dvc/cache",
                ".ppg-work"):
        shutil.rmtree(ws / rel, ignore_errors=True)
    first = subprocess.run(["git", "rev-list", "--max-parents=0", "HEAD"], cwd=ws, capture_output=True,
                           text=True).stdout.strip()
    subprocess.run(["git", "checkout", first, "--", "params.yaml"], cwd=ws, env=env, check=True)
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(ws), str(clone)], env=env, check=True)
    e = {**env, "MLFLOW_TRACKING_URI": f"sqlite:///{ws}/mlflow/mlflow.db"}
    ppg = str(BIN / "ppg")
    res = subprocess.run([ppg, "reproduce", "ppg-chatting", "1", "--into", str(tmp_path / "rebuilt")], cwd=clone, env=e,
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert out["weights_identical"] and out["max_abs_weight_diff"] == 0.0, out
    assert out["metrics_identical"] and out["metrics"]["validation.online.reward"][0] is not None
    assert out["mlflow_run_id"] != out["recorded_run_id"] and out["steps_trained"] == out["steps_recorded"] == 20
    assert out["code_hash"][0] == out["code_hash"][1] and out["environment_mismatch"] == []
    c, _, _ = registry_state(ws)
    assert c.get_run(out["mlflow_run_id"]).info.status == "FINISHED"  # a new training run, in the same store
    assert "pulling the inputs of train@" in res.stderr and "data/built" in res.stderr
    shown = subprocess.run([ppg, "show", "ppg-chatting/1"], cwd=clone, env=e, capture_output=True, text=True)
    assert shown.returncode == 0 and "ppg-chatting v1" in shown.stdout and "train.seed=7" in shown.stdout, shown
    # the logged files of data.source are not in the clone: a rebuild from import is refused, naming one
    again = subprocess.run([ppg, "reproduce", "ppg-chatting", "1", "--from", "import", "--into",
                            str(tmp_path / "from-import")], cwd=clone, env=e, capture_output=True, text=True)
    assert again.returncode == 2 and "batch-000.jsonl" in again.stderr and "gone" in again.stderr, again.stderr
