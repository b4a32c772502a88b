"""The real-data part of the K study on a small generated Consistent-LLMs file (tiny model)."""

import json
import os
import random
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def write_therapy_file(path: Path, dialogues: int = 8, rounds: int = 6, seed: int = 0) -> int:
    """Consistent-LLMs records (therapy: the patient P2 is judged, odd lines); returns how many
    judged lines carry a verdict. Verdict texts end in YES (contradicts) or NO, one has none."""
    rng = random.Random(seed)
    recs, judged = [], 0
    for i in range(dialogues):
        conv, prompt, index = [], [], []
        for j in range(rounds):
            who = "Therapist" if j % 2 == 0 else "Patient"
            conv.append([j, f"{who}: line {j} of dialogue {i}, feeling {rng.choice(['calm', 'tired', 'angry'])}.\n"])
            if j % 2:
                verdict = "" if (i, j) == (0, 1) else rng.choice([" YES", " NO", " NO"])
                prompt.append([j, "The line fits the background." + verdict])
                index.append([j, "No conflicts. []"])
                judged += bool(verdict)
        recs.append({"task_name": "Therapy", "P1": "", "P2": f"I am patient {i}, a {rng.choice(['nurse', 'cook'])}.",
                     "rounds": rounds, "conversation": conv, "eval_prompt_consistency": prompt,
                     "eval_index_consistency": index})
    path.write_text(json.dumps(recs))
    return judged


def test_every_judged_turn_is_scored_once_by_a_model_that_never_saw_it(tmp_path, prefect_api):
    from flows.study import ppg_study_real

    data = tmp_path / "dialogues"
    data.mkdir()
    judged = write_therapy_file(data / "therapy__gen_0_1.json")
    p = yaml.safe_load((ROOT / "params.yaml").read_text())
    p["mlflow"] = {"tracking_uri": f"sqlite:///{tmp_path}/mlflow.db", "artifacts": str(tmp_path / "art")}
    p["study"]["real"] = {"out": str(tmp_path / "real"), "domains": ["therapy"], "policies": ["k3"],
                          "weights": ["raw", "shaped"], "model": "tiny", "lora": False, "max_dialogues": 6,
                          "folds": 2, "max_turns": 0, "max_length": 256, "steps": 2, "batch_size": 2}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(p))
    s = ppg_study_real(data=str(data), workspace=str(tmp_path))
    assert s["cells_run"] == 4 and sorted(s["cells"]) == ["therapy|k3|raw", "therapy|k3|shaped"]
    row = s["cells"]["therapy|k3|raw"]
    kept = [json.loads(x) for x in (tmp_path / "real/data/therapy/dialogues.jsonl").read_text().splitlines()]
    assert len(kept) == 6  # the seeded subsample
    with_verdict = sum(ln["reward"] is not None for d in kept for ln in d["lines"])
    assert row["turns"] == with_verdict <= judged and row["folds"] == [0, 1]
    # the two folds' scored turns are disjoint persona groups covering the domain
    groups = [{json.loads(x)["group"] for x in (tmp_path / f"real/cells/therapy-f{f}-k3-raw/turns.jsonl").read_text()
               .splitlines()} for f in (0, 1)]
    assert groups[0] and groups[1] and not groups[0] & groups[1]
    cell = json.loads((tmp_path / "real/cells/therapy-f0-k3-raw/cell.json").read_text())
    assert cell["device"] == "cpu"  # no GPU here; on one, training and scoring both run there
    assert cell["train_seconds"] > 0 and cell["score_seconds"] > 0
    assert abs(cell["train_seconds"] + cell["score_seconds"] - cell["seconds"]) < 1e-6
    assert row["auc"]["refused"] and f"n = {row['contradictions']} contradicting" in row["auc"]["reason"]
    assert row["weighted_nll"]["n"] == row["turns"] and row["weighted_nll_change"]["n"] == row["turns"]
    from ppg.study.report import report

    md = report(None, tmp_path / "real/summary.json", tmp_path / "results").read_text()
    assert "6 dialogues per domain, 2 persona-grouped folds, 256-token windows, 2 steps x 2 windows" in md
    assert f"| therapy | k3 | raw | {row['auc']['reason']} | {row['contradictions']} / {row['turns']} |" in md
    # the reference's log-probs were computed once per fold and reused by the other weighting's
    # cell: scoring without the cache gives the same numbers
    import pyarrow.parquet as pq

    from ppg.config import load_params
    from ppg.evaluate.run import load_trained
    from ppg.evaluate.offline import offline_turns
    from ppg.study.real import cell_params

    assert sorted(f.name for f in (tmp_path / "real/data/therapy").glob("reference-*")) == \
        ["reference-fold0.json", "reference-fold1.json"]
    os.chdir(tmp_path)
    try:
        p = load_params("params.yaml")
        cell = {"id": "therapy-f1-k3-shaped", "domain": "therapy", "fold": 1, "policy": "k3", "weights": "shaped"}
        cp = cell_params(p, cell, Path("real"))
        rows = [x for x in pq.read_table("real/data/therapy/built/train.parquet").to_pylist() if x["fold"] == 1]
        model, ref, tok, lora = load_trained(cp, "k3-fold1")
        fresh = offline_turns(model, ref, lora, tok, rows, "k3")
    finally:
        os.chdir(ROOT)
    cached = [json.loads(x)
              for x in (tmp_path / "real/cells/therapy-f1-k3-shaped/turns.jsonl").read_text().splitlines()]
    assert [t["score"] for t in fresh] == [t["score"] for t in cached]
    assert ppg_study_real(data=str(data), workspace=str(tmp_path))["cells_run"] == 0  # read back, not retrained
    # the bc control added later: the data are rebuilt with its weights (same folds and windows), its
    # two cells train with raw weights only, the finished k3 cells are read back
    before = pq.read_table(tmp_path / "real/data/therapy/built/train.parquet").to_pylist()
    p = yaml.safe_load((tmp_path / "params.yaml").read_text())
    p["study"]["real"]["policies"] = ["bc", "k3"]
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(p))
    s = ppg_study_real(data=str(data), workspace=str(tmp_path))
    assert s["cells_run"] == 2 and sorted(s["cells"]) == ["therapy|bc|raw", "therapy|k3|raw", "therapy|k3|shaped"]
    after = pq.read_table(tmp_path / "real/data/therapy/built/train.parquet").to_pylist()
    assert [(r["sequence_id"], r["window"], r["fold"], r["input_ids"]) for r in after] == \
        [(r["sequence_id"], r["window"], r["fold"], r["input_ids"]) for r in before]
    assert all(w == 1.0 for r in after for w, x in zip(r["w_bc"], r["reward"]) if x == x)
    assert s["cells"]["therapy|bc|raw"]["turns"] == row["turns"]


def test_scored_rows_balance_contradictions_then_fill_the_budget_the_same_way_each_time():
    from ppg.study.real import scored_rows

    nan = float("nan")
    rewards = [[1.0, 1.0], [0.0, 1.0], [1.0, nan], [1.0, 1.0, 1.0], [nan, 0.0], [1.0], [1.0, 1.0],
               [0.0, 0.0], [1.0, 0.0, 1.0], [0.0]]
    rows = [{"id": i, "reward": r, "turn_index": [-1] + [t for t in range(len(r)) for _ in range(2)]}
            for i, r in enumerate(rewards)]
    assert scored_rows(rows, 0, "k") == rows

    def count(got):
        judged = sum(sum(x == x for x in r["reward"]) for r in got)
        return judged, sum(sum(x == x and x < 0.5 for x in r["reward"]) for r in got)

    for max_turns in (4, 6, 9):
        got = scored_rows(rows, max_turns, "therapy:0")
        ids = [r["id"] for r in got]
        assert ids == sorted(ids) and got == scored_rows(rows, max_turns, "therapy:0")  # fold order, seeded
        judged, n_bad = count(got)
        last = min(sum(x == x for x in r["reward"]) for r in got)
        assert judged >= max_turns and judged - 3 < max_turns  # stops at the first window past the budget
        # contradictions first, up to half the budget: one window past half at most, never none
        assert (max_turns + 1) // 2 <= n_bad < (max_turns + 1) // 2 + 2, (max_turns, ids)
        assert last >= 1
    # a budget above the fold: every contradiction and every window
    assert scored_rows(rows, 100, "x") == rows
    # a budget of one turn: one window, holding a contradiction
    assert [count([r])[1] > 0 for r in scored_rows(rows, 1, "x")] == [True]
    # a later window of a dialogue: the turns before it are history (turn_index -1), not scored
    window = {"id": 0, "reward": [0.0, 0.0, 1.0, 1.0], "turn_index": [-1, -1, 2, 2, 3]}
    clean = {"id": 1, "reward": [0.0], "turn_index": [0]}
    assert scored_rows([window, clean], 1, "x") == [clean]  # the window's own turns hold no contradiction
