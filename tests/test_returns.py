import math
import random

import pytest
import torch

from ppg.reference import credited_turns, naive_partial_returns
from ppg.returns import parse_policy_id, partial_returns, policy_id

NAN = float("nan")


def random_batch(rng, dtype=torch.float64, nan_p=0.1):
    """Mixed lengths (0 included), garbage (even NaN/inf) at padding, some unknown rewards."""
    B, T = rng.randint(1, 6), rng.randint(0, 12)
    n = torch.tensor([rng.randint(0, T) for _ in range(B)], dtype=torch.long)
    mask = torch.arange(T)[None, :] < n[:, None]
    rewards = torch.tensor([[rng.random() for _ in range(T)] for _ in range(B)], dtype=dtype)
    for b in range(B):
        for t in range(T):
            if t < n[b] and rng.random() < nan_p:
                rewards[b, t] = NAN
            elif t >= n[b]:
                rewards[b, t] = rng.choice([NAN, math.inf, -7.0, 3.0])
    starts = torch.tensor([[t == 0 or rng.random() < 0.3 for t in range(T)] for _ in range(B)],
                          dtype=torch.bool).reshape(B, T) & mask
    return rewards, mask, starts


def policy_cases(rng, T, starts):
    yield "greedy", {}
    yield "kstep", {"k": rng.randint(1, T + 2)}
    yield "full", {}
    yield "segment", {"segments": rng.randint(1, T + 2)}
    yield "segment", {"segments": starts}
    yield "bc", {}


def assert_same(got, want, atol):
    assert torch.equal(torch.isnan(got), torch.isnan(want)), (got, want)
    ok = ~torch.isnan(want)
    assert torch.allclose(got.double()[ok], want[ok], atol=atol, rtol=0), (got, want)


@pytest.mark.parametrize("dtype,atol", [(torch.float64, 1e-12), (torch.float32, 1e-5)])
def test_every_policy_matches_naive_double_loop(dtype, atol):
    rng = random.Random(0)
    for _ in range(250):
        rewards, mask, starts = random_batch(rng, dtype)
        gamma = rng.choice([1.0, 1.0, rng.uniform(0.05, 1.0)])
        for policy, kw in policy_cases(rng, rewards.shape[1], starts):
            got = partial_returns(rewards, mask, policy, gamma=gamma, **kw)
            assert got.dtype == dtype and got.shape == rewards.shape
            assert_same(got, naive_partial_returns(rewards, mask, policy, gamma=gamma, **kw), atol)


def test_hand_computed_example():
    r = torch.tensor([[1.0, 0.0, 1.0, 1.0, 0.0], [0.5, NAN, 1.0, 9.0, 9.0]])
    m = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]], dtype=torch.bool)
    assert_same(partial_returns(r, m, "kstep", k=2),
                torch.tensor([[1.0, 1, 2, 1, 0], [NAN, NAN, 1, 0, 0]], dtype=torch.float64), 0)
    assert_same(partial_returns(r, m, "full"),
                torch.tensor([[3.0, 2, 2, 1, 0], [NAN, NAN, 1, 0, 0]], dtype=torch.float64), 0)
    starts = torch.tensor([[1, 0, 0, 1, 0], [1, 0, 1, 0, 0]], dtype=torch.bool)
    assert_same(partial_returns(r, m, "segment", segments=starts),
                torch.tensor([[2.0, 1, 1, 1, 0], [NAN, NAN, 1, 0, 0]], dtype=torch.float64), 0)
    # behaviour cloning: weight 1 at every real turn, an unknown reward included; 0 at padding
    assert_same(partial_returns(r, m, "bc"), torch.tensor([[1.0, 1, 1, 1, 1], [1, 1, 1, 0, 0]], dtype=torch.float64), 0)
    # gamma = 0.5, k = 2: w_t = r_t + 0.5 r_{t+1}
    assert_same(partial_returns(r, m, "kstep", k=2, gamma=0.5),
                torch.tensor([[1.0, 0.5, 1.5, 1.0, 0], [NAN, NAN, 1, 0, 0]], dtype=torch.float64), 1e-7)


def test_kstep_k1_is_greedy_and_long_k_is_full():
    rng = random.Random(1)
    for _ in range(100):
        r, m, _ = random_batch(rng)
        T = r.shape[1]
        assert_same(partial_returns(r, m, "kstep", k=1), partial_returns(r, m, "greedy").double(), 0)
        for k in (T, T + 5):
            assert_same(partial_returns(r, m, "kstep", k=max(k, 1)), partial_returns(r, m, "full"), 1e-12)


def test_segment_extremes_are_full_and_greedy():
    rng = random.Random(2)
    for _ in range(100):
        r, m, _ = random_batch(rng)
        T = r.shape[1]
        one = torch.zeros_like(m)
        one[:, :1] = m[:, :1]
        full = partial_returns(r, m, "full")
        assert_same(partial_returns(r, m, "segment", segments=one), full, 1e-12)
        assert_same(partial_returns(r, m, "segment", segments=max(T, 1)), full, 1e-12)
        greedy = partial_returns(r, m, "greedy")
        assert_same(partial_returns(r, m, "segment", segments=1), greedy, 0)
        assert_same(partial_returns(r, m, "segment", segments=m.clone()), greedy, 0)


def test_kstep_ignores_rewards_beyond_horizon():
    rng = random.Random(3)
    for _ in range(100):
        r, m, _ = random_batch(rng, nan_p=0.0)
        B, T = r.shape
        k = rng.randint(1, 4)
        for gamma in (1.0, 0.7):
            w = partial_returns(r, m, "kstep", k=k, gamma=gamma)
            for b in range(B):
                for t in range(T):
                    r2 = r.clone()
                    r2[b, t + k:] = torch.rand(max(T - t - k, 0), dtype=r.dtype) * 100
                    assert partial_returns(r2, m, "kstep", k=k, gamma=gamma)[b, t] == pytest.approx(
                        float(w[b, t]), abs=1e-9)


def test_padding_values_never_change_anything():
    rng = random.Random(4)
    for _ in range(100):
        r, m, starts = random_batch(rng)
        r2 = r.clone()
        r2[~m] = torch.tensor(rng.choice([NAN, 1e30, -math.inf, 0.0]), dtype=r.dtype)
        for policy, kw in policy_cases(rng, r.shape[1], starts):
            w = partial_returns(r, m, policy, **kw)
            assert (w[~m] == 0).all()
            assert_same(partial_returns(r2, m, policy, **kw), w.double(), 0)


def test_unknown_reward_makes_exactly_the_turns_that_credit_it_nan():
    rng = random.Random(5)
    for _ in range(200):
        r, m, starts = random_batch(rng, nan_p=0.0)
        if not m.any():
            continue
        b, j = random.choice(m.nonzero().tolist())
        r[b, j] = NAN
        for policy, kw in policy_cases(rng, r.shape[1], starts):
            clean = partial_returns(torch.nan_to_num(r, nan=0.5), m, policy, **kw)
            w = partial_returns(r, m, policy, **kw)
            ref = naive_partial_returns(torch.nan_to_num(r, nan=0.5), m, policy, **kw)
            n = int(m[b].sum())
            k, seg = kw.get("k"), kw.get("segments")
            for t in range(n):
                S = credited_turns(policy, t, n, k, starts[b].tolist() if isinstance(seg, torch.Tensor)
                                   else None, seg if isinstance(seg, int) else None)
                assert math.isnan(w[b, t]) == (j in S)
            # every other weight is untouched and exact
            other = ~torch.isnan(w)
            assert torch.allclose(w[other], clean[other], atol=1e-12)
            assert torch.allclose(w[other], ref[other], atol=1e-12)


def test_float32_weights_stay_accurate_for_long_dialogues():
    # 2,000 turns of rewards in [0, 1]: prefix sums reach ~1,000; the documented bound is
    # T * ulp(sum) (~0.1 here), and the real error is far below it.
    g = torch.Generator().manual_seed(0)
    r = torch.rand(4, 2000, generator=g)
    m = torch.ones_like(r, dtype=torch.bool)
    for policy, kw in [("kstep", {"k": 3}), ("full", {}), ("segment", {"segments": 7})]:
        err = (partial_returns(r, m, policy, **kw).double()
               - naive_partial_returns(r, m, policy, **kw)).abs().max()
        assert err < 1e-3, (policy, err)


@pytest.mark.parametrize("kwargs,argument", [
    (dict(policy="kstep", k=0), "k"),
    (dict(policy="kstep", k=None), "k"),
    (dict(policy="kstep", k=2.0), "k"),
    (dict(policy="boltzmann"), "policy"),
    (dict(policy="full", gamma=0.0), "gamma"),
    (dict(policy="full", gamma=1.5), "gamma"),
    (dict(policy="segment", segments=0), "segments"),
    (dict(policy="segment", segments=None), "segments"),
    (dict(policy="segment", segments=torch.tensor([[0, 1, 0], [1, 0, 0]], dtype=torch.bool)), "segments"),
    (dict(policy="segment", segments=torch.tensor([[1, 0, 1], [1, 0, 0]], dtype=torch.bool)), "segments"),
    (dict(policy="segment", segments=torch.ones(2, 4, dtype=torch.bool)), "segments"),
])
def test_bad_arguments_raise_naming_the_argument(kwargs, argument):
    r = torch.tensor([[1.0, 0.0, 1.0], [1.0, 1.0, 0.0]])
    m = torch.tensor([[1, 1, 0], [1, 1, 1]], dtype=torch.bool)
    with pytest.raises(ValueError, match=rf"^{argument}:"):
        partial_returns(r, m, **kwargs)


def test_bad_tensors_raise_naming_the_argument():
    r = torch.ones(2, 3)
    m = torch.ones(2, 3, dtype=torch.bool)
    with pytest.raises(ValueError, match="^mask:"):
        partial_returns(r, torch.ones(2, 4, dtype=torch.bool), "full")
    with pytest.raises(ValueError, match="^mask:"):
        partial_returns(r, torch.ones(2, 3), "full")
    with pytest.raises(ValueError, match="^mask: not left-aligned"):
        partial_returns(r, torch.tensor([[1, 0, 1], [1, 1, 1]], dtype=torch.bool), "full")
    with pytest.raises(ValueError, match="^rewards:"):
        partial_returns(torch.ones(2, 3, dtype=torch.long), m, "full")
    with pytest.raises(ValueError, match=r"^rewards: ±inf"):
        partial_returns(torch.tensor([[1.0, math.inf, 0.0], [0.0, 0.0, 0.0]]), m, "full")
    # validate=False skips the checks (the caller vouches for the inputs)
    partial_returns(r, torch.tensor([[1, 0, 1], [1, 1, 1]], dtype=torch.bool), "full", validate=False)


def test_policy_ids_round_trip():
    for pid, parsed in [("greedy", ("greedy", None)), ("k3", ("kstep", 3)), ("k12", ("kstep", 12)),
                        ("full", ("full", None)), ("segment", ("segment", None))]:
        assert parse_policy_id(pid) == parsed
        assert policy_id(*parsed) == pid
    for bad in ("k0", "k", "K3", "kstep", "k-1", "greedy2"):
        with pytest.raises(ValueError, match="policy id"):
            parse_policy_id(bad)
