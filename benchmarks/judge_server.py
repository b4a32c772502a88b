"""The LLM judge's local server, three ways, same model, same judge requests, side by side in one
run: `stdlib` (benchmarks/stdlib_judge_server.py: ours as it was, one generation at a time),
`transformers` (`transformers serve` without continuous batching) and `ppg` (`ppg serve-judge`:
`transformers serve` with continuous batching, pinned to the model under the judge's name).

    python benchmarks/judge_server.py [--model smollm2-135m] [--dialogues 3] [--lines 6] \
        [--concurrency 4] [--max-tokens 48] [--servers stdlib,transformers,ppg]

The requests are the real LLMJudge's (prompt-to-line and line-to-line per line, greedy) over the
first dialogues of the shared Consistent-LLMs files (or, without them, a few written here). Prints,
per server: wall time, requests/s, generated tokens/s, verdicts given, and how many answers are
word for word those of the stdlib server (the same greedy model should agree), then the ratios.
"""

import argparse
import dataclasses
import os
import signal
import subprocess
import sys
import time
from pathlib import Path


from ppg.config import load_params
from ppg.io import free_port
from ppg.judges.serve import wait_healthy
from ppg.data.schema import Dialogue, Line

SHARED = Path(__file__).resolve().parents[2] / "shared/data/consistent-llms/dialogues"
BIN = Path(sys.executable).parent


def dialogues(n: int, lines: int) -> list[Dialogue]:
    if SHARED.is_dir():
        from ppg.data.importers import import_paths

        ds, _ = import_paths("consistent-llms", sorted(SHARED.glob("*.json")))
    else:  # a stand-in with the same shape: two speakers, one evaluated
        persona = "I am Rui, 52, a fisherman in Porto. I never learned to swim. I have three daughters."
        texts = ["Tell me about yourself.", "I fish off Porto, like my father did.", "Do you swim?",
                 "Never learned, funny for a fisherman.", "Family?", "Three daughters, all grown up.",
                 "And now?", "Still out at dawn."]
        ds = [Dialogue(dialogue_id=f"d{i}", domain="chatting", source="bench", evaluated_speakers=["A"],
                       personas={"A": persona, "B": "A curious visitor."},
                       lines=[Line(speaker="AB"[j % 2], text=t) for j, t in enumerate(texts)])
              for i in range(n)]
    out = []
    for d in ds[:n]:
        d = d.model_copy(deep=True)
        d.lines = d.lines[:lines]
        for ln in d.lines:
            ln.reward = None
        out.append(d)
    return out


def start(kind: str, model_dir: Path, port: int) -> subprocess.Popen:
    if kind == "stdlib":
        cmd = [sys.executable, Path(__file__).with_name("stdlib_judge_server.py"), model_dir, port]
    elif kind == "ppg":
        cmd = [BIN / "ppg", "serve-judge", "--model", model_dir, "--port", port, "--device", "cpu"]
    else:
        cmd = [BIN / "transformers", "serve", model_dir, "--host", "127.0.0.1", "--port", port, "--device", "cpu",
               "--no-continuous-batching"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    return subprocess.Popen([str(c) for c in cmd], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--dialogues", type=int, default=3)
    ap.add_argument("--lines", type=int, default=6)
    ap.add_argument("--concurrency", type=int, default=4)
    ap.add_argument("--max-tokens", type=int, default=48)
    ap.add_argument("--servers", default="stdlib,transformers,ppg")
    a = ap.parse_args()
    from ppg.judges.llm import LLMJudge
    from ppg.models import resolve_model

    model_dir = resolve_model(a.model)
    ds = dialogues(a.dialogues, a.lines)
    judge_cfg = load_params(Path(__file__).resolve().parents[1] / "params.yaml").judge
    print(f"{len(ds)} dialogues x {a.lines} lines, model {a.model}, concurrency {a.concurrency}, "
          f"max_tokens {a.max_tokens}, {os.cpu_count()} CPUs")
    rows, answers = {}, {}
    for kind in a.servers.split(","):
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        proc = start(kind, model_dir, port)
        try:
            t0 = time.perf_counter()
            wait_healthy(proc, url, 300, lambda: proc.stdout.read())
            ready = time.perf_counter() - t0
            served = "judge" if kind == "ppg" else str(model_dir)  # ppg serve-judge answers as judge.model
            cfg = dataclasses.replace(judge_cfg, base_url=f"{url}/v1", model=served, concurrency=a.concurrency,
                                      max_tokens=a.max_tokens, retries=0, timeout_s=600.0)
            warm = ds[0].model_copy(deep=True)
            warm.lines = warm.lines[:2]
            LLMJudge(cfg).judge([warm])  # first requests load and trace: not timed
            judge = LLMJudge(cfg)
            t0 = time.perf_counter()
            judged = judge.judge(ds)
            wall = time.perf_counter() - t0
        except Exception as e:  # a server that cannot run here is reported, not hidden
            print(f"{kind}: failed: {type(e).__name__}: {str(e)[-600:]}")
            continue
        finally:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=30)
        n = judge.counts
        texts = [ln.judge["prompt_to_line"] for d in judged for ln in d.lines if ln.judge]
        answers[kind] = texts
        verdicts = sum(ln.reward is not None for d in judged for ln in d.lines if ln.judge)
        rows[kind] = {"ready_s": ready, "wall_s": wall, "requests": n["requests"], "req_s": n["requests"] / wall,
                      "tok_s": n["tokens_out"] / wall, "verdicts": f"{verdicts}/{len(texts)}"}
        print(f"{kind}: up in {ready:.0f} s; {n['requests']} requests in {wall:.1f} s = "
              f"{n['requests'] / wall:.2f} req/s, "
              f"{n['tokens_out']} tokens out = {n['tokens_out'] / wall:.1f} tok/s; verdicts {verdicts}/{len(texts)}")
    if "stdlib" in answers:
        for kind, texts in answers.items():
            same = sum(x == y for x, y in zip(texts, answers["stdlib"]))
            print(f"{kind}: {same}/{len(texts)} prompt-to-line answers identical to the stdlib server's")
        for kind, r in rows.items():
            print(f"{kind} / stdlib: {r['req_s'] / rows['stdlib']['req_s']:.2f}x requests/s")


if __name__ == "__main__":
    main()
