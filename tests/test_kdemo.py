"""The K demo (params.kdemo.yaml, `ppg demo`): its decision metric, its world and base (the settled
K study's), and that it can never touch the user's registry."""

from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]


def study_world(dialogues=60, seed=3):
    from ppg.config import SimConfig
    from ppg.sim.simulate import simulate

    cfg = SimConfig(domain="kdemo", dialogues=dialogues, turns=10, seed=seed, evasive_reward=0.2,
                    domains={"kdemo": {"distance": [1], "known": 4, "probes": 2}})
    return simulate("kdemo", dialogues, 10, seed, cfg)


def test_invented_is_the_share_of_open_asks_answered_as_the_study_counts_them():
    from ppg.metrics import invented
    from ppg.study.sim import decisions

    ds = study_world()
    per = [invented(d.turns("persona")) for d in ds]
    # naive: read the story from meta, as the K study does, and count asks of facts it leaves open
    for d, rate in zip(ds, per):
        known = set(d.meta["sim"]["persona"]["known"])
        asks = [ln for ln in d.turns("persona") if ln.judge["asked"] and not ln.judge["probe"]
                and ln.judge["asked"] not in known]
        assert rate == (sum(ln.judge["answered"] for ln in asks) / len(asks) if asks else None)
    counts = decisions(ds)["counts"]
    assert counts["open_asks"] > 30 and 0 < counts["open_invented"] < counts["open_asks"]  # both choices occur
    assert sum(x is not None for x in per) == sum(
        any(ln.judge["open"] and not ln.judge["probe"] for ln in d.turns("persona")) for d in ds)


def test_the_demo_runs_on_the_settled_studys_world_and_base():
    from ppg.config import Params
    from ppg.overlay import merged_text
    from ppg.study.demo import BASE_WORLD, base_params
    from ppg.study.sim import base_params as study_base_params
    from ppg.study.sim import config_key

    kstudy = Params.from_dict(yaml.safe_load(merged_text(ROOT / "params.yaml", ROOT / "params.kstudy.yaml")), "k")
    assert config_key(base_params()) == config_key(study_base_params(kstudy, Path(".")))  # the same recipe
    demo = Params.from_dict(yaml.safe_load(merged_text(ROOT / "params.yaml", ROOT / "params.kdemo.yaml")), "d")
    world = demo.sim.domains[demo.sim.domain]
    assert world == {"distance": [1], "known": kstudy.study.known, "probes": BASE_WORLD["probes"]}
    assert (demo.sim.evasive_reward, demo.sim.turns, demo.eval.turns) == (0.2, 10, 10)
    assert (demo.returns.baseline, demo.returns.clip) == ("turn_kind", [0.0, None])  # the settled study's shaping
    assert (demo.train.max_steps, demo.train.batch_size, demo.eval.personas) == (100, 8, 96)
    assert demo.model.spec == "sim-base" and {"greedy", "k3", "full", "bc"} <= set(demo.returns.policies)
    # never a candidate for the user's registry: it registers nothing, under a name of its own
    assert not demo.pipeline.register and demo.registry.model != Params().registry.model
    assert demo.pipeline.plot == ["online.invented", "online.reward"]


def test_a_plot_of_an_unknown_metric_is_refused_when_params_load():
    from ppg.config_ops import PipelineConfig

    with pytest.raises(ValueError, match="pipeline.plot: 'online.invention'"):
        PipelineConfig(plot=["online.invention"])


def test_the_demo_workspace_is_its_own_and_follows_the_checkouts_code(tmp_path):
    import subprocess

    from ppg.config import load_params
    from ppg.study.demo import make_workspace

    ws = tmp_path / "kdemo"
    assert make_workspace(ws) == "made"
    git = lambda *a: subprocess.run(["git", *a], cwd=ws, capture_output=True, text=True).stdout  # noqa: E731
    assert git("status", "--porcelain") == "" and git("log", "--oneline").count("\n") == 1  # all committed
    p = load_params(ws / "params.yaml")  # params.kdemo.yaml merged in: its own registry name, registers nothing
    assert p.registry.model == "ppg-kdemo" and not p.pipeline.register and p.model.spec == "sim-base"
    assert (ws / "ppg" / "returns.py").read_bytes() == (ROOT / "ppg" / "returns.py").read_bytes()
    assert make_workspace(ws) == "current"
    (ws / "ppg" / "returns.py").write_text("# the code of an older checkout\n")  # stages must see the code that runs
    git("commit", "-qam", "an older checkout's code")
    assert make_workspace(ws) == "updated" and (ws / "ppg" / "returns.py").read_bytes() == (
        ROOT / "ppg" / "returns.py").read_bytes()
    assert git("status", "--porcelain") == "" and not (ROOT / "kdemo").exists()
