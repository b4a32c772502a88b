"""The workspace's tools beside the pipeline flow: the workspace lock, params overlays, and the
K-study flow that resumes its cells (each on its own folder, not the pipeline's workspace)."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]


def test_workspace_lock_waits_times_out_and_is_released_by_a_dead_holder(tmp_path):
    from ppg.lock import LockTimeout, workspace_lock

    lock = tmp_path / "pipeline.lock"
    code = f"from ppg.lock import workspace_lock\nimport os\nwith workspace_lock(5, path={str(lock)!r}):\n" \
           " print('held', flush=True); os._exit(0)"  # dies holding it: the kernel releases flock
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert p.stdout.strip() == "held"
    with workspace_lock(1, path=lock):
        assert json.loads(lock.read_text())["pid"] == os.getpid()
        said = []
        with pytest.raises(LockTimeout, match=r"gave up after \d+ s \(pipeline.lock_timeout = 0.3\)"):
            with workspace_lock(0.3, path=lock, say=said.append):
                pass
        assert said and "held by" in said[0]
    assert lock.read_text() == ""  # released and cleared


def test_params_overlay_merges_keys_keeps_comments_and_refuses_bad_keys(tmp_path):
    from ppg.overlay import apply_overlay

    params, overlay = tmp_path / "params.yaml", tmp_path / "over.yaml"
    shutil.copy(ROOT / "params.yaml", params)
    overlay.write_text("model: {spec: tiny}\ntrain: {deepspeed: {optimizer: {params: {lr: 0.003}}}}\n")
    apply_overlay(params, overlay)
    p = yaml.safe_load(params.read_text())
    assert p["model"] == {"spec": "tiny", "base": "models/base"}  # merged, not replaced
    assert p["train"]["deepspeed"]["optimizer"]["params"]["lr"] == 0.003
    assert p["train"]["deepspeed"]["optimizer"]["params"]["torch_adam"] is True
    assert "# The one config tree" in params.read_text() and p["online"]["domain"] is None
    before = params.read_text()
    overlay.write_text("train: {max_stepz: 3}\n")
    with pytest.raises(ValueError, match=r"over.yaml.*max_stepz"):
        apply_overlay(params, overlay)
    assert params.read_text() == before
    # offline mode with the online thresholds left in can never promote: refused, naming the key;
    # `null` removes what an overlay does not want (the real-data recipe does)
    overlay.write_text("eval: {mode: offline, primary: offline.auc}\n")
    with pytest.raises(ValueError, match=r"registry.thresholds: online.reward is never measured \(eval.mode is "
                                         r"'offline'\).*registry.thresholds: \{online.reward: null\}"):
        apply_overlay(params, overlay)
    assert params.read_text() == before
    apply_overlay(params, ROOT / "params.consistent-llms.yaml")
    p = yaml.safe_load(params.read_text())
    assert p["registry"]["thresholds"] == {"offline.auc": 0.5} and p["registry"]["non_inferiority"] == {}
    assert p["eval"]["mode"] == "offline" and "# The one config tree" in params.read_text()


def test_study_runs_its_cells_once_and_resumes(tmp_path, prefect_api):
    from flows.study import ppg_study

    p = yaml.safe_load((ROOT / "params.yaml").read_text())
    p["eval"].update(qa=False, generation={"max_new_tokens": 6, "temperature": 0.0, "top_p": 1.0, "batch_size": 4})
    p["mlflow"] = {"tracking_uri": f"sqlite:///{tmp_path}/mlflow.db", "artifacts": str(tmp_path / "art")}
    p["study"] = {"out": str(tmp_path / "study"), "distances": [2], "known": 4, "turns": 4,
                  "policies": ["greedy", "k3", "k5"], "sizes": [40], "seeds": [0], "steps": 3, "personas": 2,
                  "batch_size": 4, "base_dialogues": 20, "base_steps": 3, "real": {"weights": ["raw"]},
                  "online": {"distances": [2], "policies": ["k3"], "steps": 2, "personas_per_step": 2, "group": 2},
                  "weights": {"raw": {"baseline": "none", "standardize": False, "clip": None}}}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(p))
    s = ppg_study(workspace=str(tmp_path))
    # k5 >= 4 turns: skipped; the base cell evaluates the behaviour-cloned start of every cell
    # online cells train from the same base by rollouts (no logged data: n = 0)
    assert s["cells_run"] == 4
    assert sorted(s["cells"]) == ["2|0|base|-", "2|0|k3|online", "2|40|greedy|raw", "2|40|k3|raw"]
    online = json.loads((tmp_path / "study/cells/d2-online-s0-k3/metrics.json").read_text())
    assert online["online"]["dialogues"] == 2 and online["decisions"]["counts"]["open_asks"] >= 0
    assert s["best"] == {"2|40|raw": max(("greedy", "k3"), key=lambda q: s["cells"][f"2|40|{q}|raw"]["reward"]["mean"])}
    base = json.loads((tmp_path / "study/base/models/bc/run.json").read_text())
    assert base["policy"] == "bc" and base["steps"] == 3
    cell = json.loads((tmp_path / "study/cells/d2-n40-s0-k3-raw/metrics.json").read_text())
    assert 0.0 <= cell["online"]["reward"]["mean"] <= 1.0 and len(cell["drift"]) == 4
    n = cell["decisions"]["counts"]  # 4 turns, d = 2: one ask -> probe window per dialogue
    assert n["open_asks"] + n["known_asks"] == 2 and n["open_probes"] == n["open_asks"]
    from mlflow import MlflowClient

    c = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    run = c.get_run(cell["mlflow_run_id"])
    assert run.data.tags["ppg.policy"] == "k3" and "validation.online.consistency" in run.data.metrics
    assert ppg_study(workspace=str(tmp_path))["cells_run"] == 0  # finished cells are read back
    p["study"]["steps"] = 4  # a changed grid: exactly the cells it changes rerun, never a stale read
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(p))
    again = ppg_study(workspace=str(tmp_path))
    assert again["cells_run"] == 2 and json.loads((tmp_path / "study/cells/d2-n40-s0-k3-raw/metrics.json")
                                                  .read_text())["mlflow_run_id"] != cell["mlflow_run_id"]
    from ppg.study.report import report

    md = report(tmp_path / "study/summary.json", None, tmp_path / "results").read_text()
    best = s["best"]["2|40|raw"]
    assert f"| 2 | raw | {best} |" in md  # the best-policy table
    reward = s["cells"][f"2|40|{best}|raw"]["reward"]["mean"]
    assert f"| {best} | raw | **{reward:.3f}" in md  # the reward table marks it
    assert "| 2 | k3 online |" in md and "| 2 | base |" in md
    # the world's predicted horizon is in the summary; one seed pairs nothing, so nothing is settled
    assert s["world"]["predicted_k"] == {"2": 3}
    assert "**Hypothesis 1: incomplete.**" in md and "| 2 | 40 | 1 | k3 |" in md
    for png in ("sim-reward-vs-n.png", "sim-invented-vs-n.png", "sim-best-policy.png", "sim-drift.png",
                "sim-reward-vs-k-raw.png"):
        assert (tmp_path / "results" / png).stat().st_size > 1000
