"""The real-data part of the K study on a small generated Consistent-LLMs file (tiny model)."""

import json
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
                          "folds": 2, "max_length": 256, "steps": 2, "batch_size": 2}
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
    assert row["auc"]["refused"] and f"n = {row['contradictions']} contradicting" in row["auc"]["reason"]
    assert row["weighted_nll"]["n"] == row["turns"] and row["weighted_nll_change"]["n"] == row["turns"]
    assert ppg_study_real(data=str(data), workspace=str(tmp_path))["cells_run"] == 0  # read back, not retrained
