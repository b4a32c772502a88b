"""The per-turn reward model on the real Consistent-LLMs verdicts, next to the LLM judge that runs
offline here (`ppg serve-judge` over SmolLM2-135M).

    python benchmarks/reward_model.py [--steps 200] [--batch 16] [--max-length 256] [--llm-lines 12] [--lora-r 0]

Trains `ppg train-judge` (SmolLM2-135M, a score head on the frozen backbone, or with --lora-r R
LoRA adapters of rank R training with it) on the shared files with 20%
of the persona groups held out, and prints its held-out AUC against the logged prompt-to-line
verdicts (pooled, and per domain where a domain has at least eval.min_contradictions contradicting
lines) with the persona-group bootstrap interval; then lines/s of the reward model's batched
scoring and of the LLM judge over real HTTP on the same machine, and their ratio.
"""

import argparse
import dataclasses
import json
import tempfile
import time
from pathlib import Path

from ppg.config import load_params
from ppg.data.importers import import_paths
from ppg.data.schema import write_dialogues

SHARED = Path(__file__).resolve().parents[2] / "shared/data/consistent-llms/dialogues"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--max-length", type=int, default=256)
    ap.add_argument("--llm-lines", type=int, default=12, help="lines the LLM judge is timed on (0: skip it)")
    ap.add_argument("--lora-r", type=int, default=0, help="LoRA rank on the backbone (0: frozen, head only)")
    a = ap.parse_args()
    if not SHARED.is_dir():
        raise SystemExit(f"{SHARED}: the shared Consistent-LLMs files are not here")
    from ppg.judges.llm import LLMJudge
    from ppg.judges.serve import judge_server
    from ppg.models import resolve_model
    from ppg.train.judge import train_judge

    dialogues, _ = import_paths("consistent-llms", sorted(SHARED.glob("*.json")))
    tmp = Path(tempfile.mkdtemp(prefix="ppg-rm-"))
    write_dialogues(tmp / "logged.jsonl", dialogues)
    p = load_params(Path(__file__).resolve().parents[1] / "params.yaml")
    rm = dataclasses.replace(p.judge.reward_model, path=str(tmp / "judge"), base="smollm2-135m", steps=a.steps,
                             batch_size=a.batch, max_length=a.max_length, lora_r=a.lora_r)
    p = dataclasses.replace(p, judge=dataclasses.replace(p.judge, reward_model=rm),
                            mlflow=dataclasses.replace(p.mlflow, tracking_uri=f"sqlite:///{tmp}/mlflow.db",
                                                       artifacts=str(tmp / "artifacts")))
    t0 = time.perf_counter()
    card = train_judge(p, tmp / "logged.jsonl", tmp / "judge", progress=False)
    v = card["validation"]
    print(f"reward model: {card['train_lines']} training lines, {v['lines']} held-out lines "
          f"({v['contradictions']} contradicting) of {v['auc'].get('groups')} persona groups; "
          f"{a.steps} steps x {a.batch} (lora_r {a.lora_r}) in {time.perf_counter() - t0:.0f} s")
    print(f"  held-out AUC pooled: {json.dumps(v['auc'])}")
    for dom, x in v["by_domain"].items():
        print(f"  {dom}: {x['lines']} lines, AUC {json.dumps(x['auc'])}")
    print(f"  expected calibration error {v['ece']:.3f}")
    rm_rate = card["scored_lines_per_s"]
    if not a.llm_lines:
        print(f"reward model scoring: {rm_rate:.1f} lines/s")
        return

    sample, n = [], 0
    for d in dialogues:  # whole dialogues until the evaluated lines reach --llm-lines
        if n >= a.llm_lines:
            break
        sample.append(d)
        n += sum(len(d.turns(s)) for s in d.evaluated_speakers)
    with judge_server(resolve_model("smollm2-135m"), device="cpu") as url:
        cfg = dataclasses.replace(p.judge, kind="llm", base_url=url, concurrency=1, timeout_s=300)
        judge = LLMJudge(cfg)  # no cache: every line is asked
        t0 = time.perf_counter()
        judged = judge.judge(sample)
        llm_s = time.perf_counter() - t0
    nulls = sum(ln.reward is None for d in judged for s in d.evaluated_speakers for ln in d.turns(s))
    llm_rate = n / llm_s
    print(f"LLM judge (serve-judge, SmolLM2-135M): {n} lines, {judge.counts['requests']} requests in {llm_s:.0f} s "
          f"= {llm_rate:.2f} lines/s; {nulls} of {n} lines without a verdict")
    print(f"reward model scoring: {rm_rate:.1f} lines/s = {rm_rate / llm_rate:.0f}x the LLM judge")


if __name__ == "__main__":
    main()
