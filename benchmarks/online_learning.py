"""Does online PPG improve on its warm start? Measured over several training seeds, side by side
with offline PPG, on the tiny model (the experiment: tests/learning_setup.py; the test suite
asserts only the offline gain, tests/test_online_learning.py says why).

One behaviour-cloned start (bc, 1,500 steps), then offline greedy (200 steps) and, per training
seed, online k3 (100 steps of 8 personas x 4 rollouts; the seed draws its rollouts). Each is
evaluated on the same 48 held-out personas at temperature 1. Printed: the judged reward and the
paired gain over bc with a 95% sign-flip interval, per run; and online k3 pooled over the seeds
(each persona's gain averaged over the seeds first, so training noise averages out before the
interval over personas is taken).

    .venv/bin/python benchmarks/online_learning.py --seeds 0 1 2 3      # ~15 min on 2 cores
"""

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from learning_setup import bc_start, behaviour_metrics, offline_greedy, online_k3, paired, summary  # noqa: E402


def pooled(start: dict, runs: list[dict], name: str = "reward"):
    """(mean gain, 95% sign-flip interval) over personas of each persona's gain averaged over runs."""
    from ppg.gate import sign_flip_interval

    x = start[name]["per_unit"]
    d = [sum(r[name]["per_unit"][k] for r in runs) / len(runs) - x[k] for k in sorted(x)]
    return sum(d) / len(d), sign_flip_interval(d)


def signed(x) -> str:
    return "none" if x is None else f"{x:+.3f}"  # a bound the sign-flip test cannot reach


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3], help="online training seeds")
    ap.add_argument("--json", type=Path, help="also write the numbers here")
    args = ap.parse_args()
    from ppg.models import resolve_model

    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        p, start, warm = bc_start(tmp, resolve_model("tiny"))
        t_bc = time.perf_counter() - t0
        runs = {"offline greedy": offline_greedy(p, tmp, warm)}
        for s in args.seeds:
            t = time.perf_counter()
            runs[f"online k3 seed {s}"] = online_k3(p, tmp, warm, s)
            print(f"online k3 seed {s}: {time.perf_counter() - t:.0f} s", file=sys.stderr)
        behaviour = behaviour_metrics(p)
    online = [m for k, m in runs.items() if k.startswith("online")]
    rows = [("behaviour", summary(behaviour), None), ("bc (the start)", summary(start), None)]
    rows += [(k, summary(m), paired(start, m)) for k, m in runs.items()]
    rows.append((f"online k3, {len(online)} seeds pooled", None, pooled(start, online)))
    print(f"tiny model, copy world, {len(start['reward']['per_unit'])} held-out personas, temperature 1; "
          f"bc start {t_bc:.0f} s, total {time.perf_counter() - t0:.0f} s")
    print(f"{'run':32s} {'reward':>7s} {'consist.':>8s} {'coverage':>8s}   gain over bc [95% interval]")
    for name, m, g in rows:
        cells = (f"{m['reward']:7.3f} {m['consistency']:8.3f} {m['coverage']:8.3f}" if m else " " * 25)
        gain = f"{g[0]:+.3f} [{signed(g[1][0])}, {signed(g[1][1])}]" if g else ""
        print(f"{name:32s} {cells}   {gain}")
    if args.json:
        args.json.write_text(json.dumps({n: {"metrics": m, "gain": g} for n, m, g in rows}, indent=1))


if __name__ == "__main__":
    main()
