"""The champion served, and the partner behind an endpoint, side by side in one run.

    python benchmarks/serving.py [--model smollm2-135m] [--concurrency 1 4 16] [--rounds 2] [--max-tokens 24]

1. Serving: the model registered as the pipeline registers it (ppg.registry.log_chat_model),
   served by `mlflow models serve` (one worker: what `ppg serve-model` ran before; POST
   /invocations) and by `ppg serve-model` (continuous batching; POST /v1/chat/completions),
   all up at once, their loads interleaved (--rounds of each). At each concurrency c, c chats run
   at once, max(c, 4) chats in all, each 4 turns (the persona as system message, the shipped
   example therapist's lines as the user's, the model's replies carried), greedy, max_tokens 24:
   requests/s and p50/p95 latency per request, and whether both servers gave the same answer to
   every request. The new server also without its request log, at the highest concurrency: what
   writing the log costs.
2. Real-persona rollouts as online evaluation plays them (ppg.rollout.play, 8 dialogues of 6
   turns, eval's sampling, no judge): the partner in this process re-encoding the chat every turn
   (gen.backend generate, the partner before), carrying its KV cache (cache), and behind a local
   endpoint (`transformers serve`, as `ppg serve-judge` runs it).

Personas: the real therapy pool in ../shared/data/consistent-llms when present, else the shipped
example personas.
"""

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
POOL = ROOT.parent / "shared/data/consistent-llms/personas/therapy__config_therapy_personas.json"
BIN = Path(sys.executable).parent


def personas_and_lines(n: int):
    from ppg.data.personas import import_personas

    logged = [json.loads(x) for x in (ROOT / "data/examples/therapy.jsonl").read_text().splitlines()]
    lines = list(dict.fromkeys(ln["text"] for d in logged for ln in d["lines"] if ln["speaker"] == "therapist"))
    if POOL.exists():
        return [p["persona"] for p in import_personas(POOL)[0]][:n], lines, "consistent-llms therapy pool"
    return list(dict.fromkeys(d["personas"]["patient"] for d in logged))[:n], lines, "shipped example personas"


def start(argv, env, url, log: Path, health: str):
    from ppg.judges.serve import wait_healthy

    with log.open("w") as f:
        proc = subprocess.Popen(argv, env=env, stdout=f, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_healthy(proc, url, 300, log.read_text, health)
    except Exception:
        stop(proc)
        raise
    return proc


def stop(proc):
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=60)


def load(post, personas, lines, concurrency: int, turns: int = 4):
    """(answers per chat, latencies, wall seconds) of max(concurrency, 4) chats of `turns` turns,
    `concurrency` at a time."""
    import httpx

    def chat(i):
        msgs, answers, lat = [{"role": "system", "content": personas[i % len(personas)]}], [], []
        with httpx.Client(timeout=600) as client:
            for t in range(turns):
                msgs.append({"role": "user", "content": lines[(i + t) % len(lines)]})
                t0 = time.perf_counter()
                text = post(client, msgs)
                lat.append(time.perf_counter() - t0)
                answers.append(text)
                msgs.append({"role": "assistant", "content": text})
        return answers, lat

    t0 = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        out = list(pool.map(chat, range(max(concurrency, 4))))
    return [a for a, _ in out], [x for _, lat in out for x in lat], time.perf_counter() - t0


def serving(a, folder, personas, lines, tmp: Path):
    import mlflow
    import yaml

    from ppg.io import free_port
    from ppg.registry import log_chat_model

    uri = f"sqlite:///{tmp}/mlflow.db"
    mlflow.set_tracking_uri(uri)
    with mlflow.start_run(experiment_id=mlflow.create_experiment("bench", artifact_location=str(tmp / "a"))):
        log_chat_model(mlflow, folder, "ppg-therapy", a.max_tokens, "therapy")
    (tmp / "params.yaml").write_text(yaml.safe_dump({"mlflow": {"tracking_uri": uri, "artifacts": str(tmp / "a")}}))
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}

    def old(client, msgs, url):
        r = client.post(f"{url}/invocations", json={"messages": msgs, "max_tokens": a.max_tokens, "temperature": 0})
        r.raise_for_status()
        return r.json()["choices"][0]["message"]["content"]

    def new(client, msgs, url):
        r = client.post(f"{url}/v1/chat/completions", json={"model": "ppg-therapy", "messages": msgs,
                                                             "max_tokens": a.max_tokens, "temperature": 0})
        r.raise_for_status()
        return r.json()["choices"][0]["message"]["content"]

    servers = {"mlflow models serve": ([str(BIN / "mlflow"), "models", "serve", "-m", "models:/ppg-therapy/1",
                                        "--env-manager", "local", "-w", "1", "-h", "127.0.0.1"], old, "/ping"),
               "ppg serve-model": ([str(BIN / "ppg"), "serve-model", "--model", "ppg-therapy", "--alias", "1",
                                    "--params", str(tmp / "params.yaml"), "--request-log", str(tmp / "requests")],
                                   new, "/health"),
               "ppg serve-model, no request log": ([str(BIN / "ppg"), "serve-model", "--model", "ppg-therapy",
                                                    "--alias", "1", "--params", str(tmp / "params.yaml")],
                                                   new, "/health")}
    procs, urls = {}, {}
    try:  # all three up at once (idle ones cost nothing), then the loads interleaved round by round,
        # so that a slow spell of the machine falls on every server alike
        for name, (argv, post, health) in servers.items():
            port = free_port()
            urls[name] = f"http://127.0.0.1:{port}"
            procs[name] = start(argv + ["-p" if health == "/ping" else "--port", str(port)], env, urls[name],
                                tmp / f"server-{port}.log", health)
        rows, answers = {}, {}
        for c in a.concurrency:
            for _ in range(a.rounds):
                for name, (_, post, _) in servers.items():
                    if "no request log" in name and c != a.concurrency[-1]:
                        continue
                    got, lat, wall = load(lambda client, msgs, post=post, name=name: post(client, msgs, urls[name]),
                                          personas, lines, c)
                    answers.setdefault((name, c), got)
                    rows.setdefault((name, c), []).append((len(lat) / wall, lat))
    finally:
        for proc in procs.values():
            stop(proc)
    print(f"| server | chats at once | requests | requests/s (each of {a.rounds} rounds) | mean requests/s | "
          f"p50 latency (s) | p95 latency (s) | same answers as mlflow |")
    print("|---|---|---|---|---|---|---|---|")
    for (name, c), runs in rows.items():
        lat = [x for _, ls in runs for x in ls]
        q = statistics.quantiles(lat, n=20)
        ref, got = answers[("mlflow models serve", c)], answers[(name, c)]
        agree = sum(x == y for r, g in zip(ref, got) for x, y in zip(r, g))
        same = "-" if ref is got else f"{agree}/{len(lat) // len(runs)}"
        print(f"| {name} | {c} | {len(lat) // len(runs)} | {', '.join(f'{r:.2f}' for r, _ in runs)} | "
              f"{statistics.mean(r for r, _ in runs):.2f} | {statistics.median(lat):.2f} | {q[18]:.2f} | {same} |")


class NoJudge:
    def identity(self):
        return {"kind": "none"}

    def judge(self, dialogues):
        return dialogues


def rollouts(a, folder, personas):
    import torch
    from transformers import AutoModelForCausalLM

    from ppg.config_rollout import PartnerEndpointConfig
    from ppg.judges.serve import judge_server
    from ppg.models import load_tokenizer
    from ppg.partner import partner_chat
    from ppg.partner_models import EndpointPartner, InProcessPartner
    from ppg.rollout import Episode, GenerationConfig, play

    tok = load_tokenizer(folder)
    policy = AutoModelForCausalLM.from_pretrained(folder).eval()
    partner_model = AutoModelForCausalLM.from_pretrained(folder).eval()
    eps = [Episode(f"b{i}", i, "patient", p, "therapist", "therapy") for i, p in enumerate(personas[:8])]
    gen = GenerationConfig(max_new_tokens=24, temperature=0.7, top_p=0.9, batch_size=8)
    print(f"\nreal-persona rollouts: {len(eps)} dialogues of 6 turns, policy and partner {a.model}, "
          f"{torch.get_num_threads()} threads")
    print("| partner | wall (s) | dialogues kept | ratio to re-encoding |")
    print("|---|---|---|---|")
    walls = {}

    def run(name, partner):
        t0 = time.perf_counter()
        stats = {}
        out = play(policy, tok, eps, partner, NoJudge(), gen, 0, stats=stats)
        walls[name] = time.perf_counter() - t0
        print(f"| {name} | {walls[name]:.1f} | {len(out)}/{len(eps)} | "
              f"{walls.get('in process, re-encoding', walls[name]) / walls[name]:.2f}x |", flush=True)

    for backend, name in (("generate", "in process, re-encoding"), ("cache", "in process, KV cache carried")):
        from dataclasses import replace

        run(name, InProcessPartner(partner_model, tok, 6, replace(gen, backend=backend), partner_chat))
    with judge_server(folder, name="user-sim", device="cpu") as url:
        cfg = PartnerEndpointConfig(base_url=url, model="user-sim", timeout_s=300)
        run("behind a local endpoint (transformers serve)", EndpointPartner(cfg, 6, gen, partner_chat))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16])
    ap.add_argument("--max-tokens", type=int, default=24)
    ap.add_argument("--rounds", type=int, default=2, help="loads per server and concurrency, interleaved")
    ap.add_argument("--skip", choices=["serving", "rollouts"], default=None)
    a = ap.parse_args()
    from ppg.models import resolve_model

    folder = resolve_model(a.model)
    personas, lines, source = personas_and_lines(16)
    print(f"{a.model}; personas: {source}; {os.cpu_count()} cores\n")
    tmp = Path(tempfile.mkdtemp(prefix="ppg-bench-serving-"))
    try:
        if a.skip != "serving":
            serving(a, folder, personas, lines, tmp)
        if a.skip != "rollouts":
            rollouts(a, folder, personas)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
