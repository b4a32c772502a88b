"""`ppg judge`: per-turn rewards for dialogues that arrive without them (the `judge` stage,
between import and validate).

Personal data is redacted first (judge.redact: e-mail addresses, phone numbers, any pattern),
before any judge sees a line and before anything becomes training data. Then the configured judge
scores the evaluated speakers' turns: `labels` keeps the logged verdicts (null stays null), `llm`
asks an OpenAI-compatible endpoint for the turns whose reward is null (all of them with
judge.overwrite) through the verdict cache, `reward-model` scores them with the per-turn reward
model of `ppg train-judge` in process. A judge that fails after its retries raises and
nothing is written; what it answered stays in the cache for the next run.
"""

import json
import re
import time
from pathlib import Path

from ppg.data.schema import Dialogue, read_dialogues, write_dialogues
from ppg.io import atomic_open
from ppg.judges.kinds import build_judge


def redact(dialogues: list[Dialogue], patterns: dict[str, str]) -> tuple[list[Dialogue], dict[str, int]]:
    """Copies with every match of each pattern replaced by `[name]` in personas, line texts and a
    logged judge's texts; how many matches each pattern had."""
    compiled = {name: re.compile(rx) for name, rx in patterns.items()}
    counts = dict.fromkeys(compiled, 0)

    def clean(s: str) -> str:
        for name, rx in compiled.items():
            s, n = rx.subn(f"[{name}]", s)
            counts[name] += n
        return s

    out = []
    for d in dialogues:
        d = d.model_copy(deep=True)
        d.personas = {k: clean(v) for k, v in d.personas.items()}
        for ln in d.lines:
            ln.text = clean(ln.text)
            if ln.judge:
                ln.judge = {k: clean(v) if isinstance(v, str) else v for k, v in ln.judge.items()}
        out.append(d)
    return out, counts


def judge_models(p) -> dict:
    """What the judge (judge section) and the grader (eval.judge over it) read, by content: a
    reward model's folder hashed, an endpoint by address and model name (its weights are not ours
    to hash; ppg.judges.kinds says what each kind reads). The `sources` stage writes it to
    data/models.json and the judge and evaluate stages depend on that, so a retrained reward model
    re-runs them."""
    from ppg.judges.kinds import judge_kind

    return {role: {"kind": cfg.kind, **judge_kind(cfg.kind).reads(cfg)}
            for role, cfg in (("judge", p.judge), ("grader", p.eval_judge()))}


def judge_dataset(p, data: Path, out: Path, progress: bool = False) -> dict:
    """Redact and judge DATA (a folder with dialogues.jsonl, or a .jsonl file) into OUT
    (dialogues.jsonl, summary.json), recorded as an MLflow run of stage `judge`."""
    from ppg import tracking

    cfg, t0 = p.judge, time.perf_counter()
    src = data / "dialogues.jsonl" if data.is_dir() else data
    dialogues, redacted = redact(read_dialogues(src), cfg.redact)
    judge = build_judge(cfg, progress)
    c = tracking.client(p.mlflow)
    run_id = tracking.open_run(c, p.mlflow, name="judge", tags={"ppg.stage": "judge", "ppg.judge": cfg.kind},
                               params={"judge." + k: v for k, v in judge.identity().items()})
    try:
        judged = judge.judge(dialogues)
    except Exception:
        c.set_terminated(run_id, "FAILED")
        raise
    turns = [ln for d in judged for s in d.evaluated_speakers for ln in d.turns(s)]
    summary = {"source": str(src), "judge": judge.identity(), "dialogues": len(judged), "turns": len(turns),
               "null_rewards": sum(ln.reward is None for ln in turns), "redacted": redacted,
               "counts": dict(judge.counts), "wall_s": round(time.perf_counter() - t0, 3)}
    write_dialogues(out / "dialogues.jsonl", judged)
    with atomic_open(out / "summary.json") as f:
        json.dump(summary, f, indent=1)
    tracking.log_metrics(c, run_id, {"dialogues": summary["dialogues"], "turns": summary["turns"],
                                     "null_rewards": summary["null_rewards"], "wall_s": summary["wall_s"],
                                     **{f"redacted.{k}": v for k, v in redacted.items()},
                                     **{k: v for k, v in judge.counts.items() if isinstance(v, (int, float))}}, 0)
    c.log_dict(run_id, summary, "judge-summary.json")
    c.set_terminated(run_id, "FINISHED")
    return summary
