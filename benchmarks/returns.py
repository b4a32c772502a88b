"""Benchmark partial_returns: 1,000,000 dialogues x 60 turns, each policy class.

    python benchmarks/returns.py [--dialogues 1000000] [--turns 60] [--repeats 3]

Prints the median seconds per class with validate=False and validate=True, and the speed-up over
the naive double loop, both measured in this run (the loop on a 10,000-dialogue slice, scaled).
Targets on the 2-core reference machine: < 1 s per class without validation, < 2 s with it.
"""

import argparse
import statistics
import time

import torch

from ppg.reference import naive_partial_returns
from ppg.returns import partial_returns


def timed(fn, repeats):
    fn()  # warm-up: first touches of allocator pages and kernels
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dialogues", type=int, default=1_000_000)
    p.add_argument("--turns", type=int, default=60)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--naive-slice", type=int, default=10_000)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    g = torch.Generator().manual_seed(a.seed)
    B, T = a.dialogues, a.turns
    n = torch.randint(10, T + 1, (B,), generator=g)
    mask = torch.arange(T)[None, :] < n[:, None]
    rewards = torch.rand(B, T, generator=g)  # float32
    starts = (torch.rand(B, T, generator=g) < 0.25) & mask
    starts[:, 0] = True
    cases = [
        ("greedy", {}),
        ("kstep k=3", {"k": 3}),
        ("kstep k=10", {"k": 10}),
        ("full", {}),
        ("segment len=4", {"segments": 4}),
        ("segment start-mask", {"segments": starts}),
        ("kstep k=3 gamma=0.9", {"k": 3, "gamma": 0.9}),
    ]
    s = a.naive_slice
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, B={B:,} T={T} float32, "
          f"median of {a.repeats}; naive loop on {s:,} dialogues scaled x{B / s:.0f}")
    print(f"{'class':24s} {'validate=False':>15s} {'validate=True':>14s} {'naive (scaled)':>15s} {'speed-up':>9s}")
    for name, kw in cases:
        policy = name.split()[0]
        fast = timed(lambda: partial_returns(rewards, mask, policy, validate=False, **kw), a.repeats)
        checked = timed(lambda: partial_returns(rewards, mask, policy, validate=True, **kw), a.repeats)
        kw_s = {**kw, "segments": starts[:s]} if isinstance(kw.get("segments"), torch.Tensor) else kw
        t0 = time.perf_counter()
        ref = naive_partial_returns(rewards[:s], mask[:s], policy, **kw_s)
        slow = (time.perf_counter() - t0) * B / s
        got = partial_returns(rewards[:s], mask[:s], policy, **kw_s).double()
        err = (got - ref).abs().max().item()
        assert err < 1e-4, f"{name}: max |error| {err}"
        print(f"{name:24s} {fast:14.3f}s {checked:13.3f}s {slow:14.0f}s {slow / fast:8.0f}x")


if __name__ == "__main__":
    main()
