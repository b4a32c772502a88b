import random

import pytest
import torch

from ppg.reference import naive_baseline
from ppg.returns import BASELINES, baseline, partial_returns, shape_weights

NAN = float("nan")


def batch(rng):
    B, T = rng.randint(1, 7), rng.randint(1, 8)
    n = torch.tensor([rng.randint(0, T) for _ in range(B)])
    mask = torch.arange(T)[None, :] < n[:, None]
    g = torch.Generator().manual_seed(rng.randint(0, 2**31))
    r = torch.rand(B, T, dtype=torch.float64, generator=g)
    r[torch.rand(B, T, generator=g) < 0.15] = NAN
    w = partial_returns(r, mask, "kstep", k=rng.randint(1, 3))
    groups = torch.tensor([rng.randint(0, 2) for _ in range(B)])
    kinds = torch.tensor([[rng.randint(0, 2) for _ in range(T)] for _ in range(B)], dtype=torch.long)
    return w, mask, groups, kinds.reshape(B, T)


@pytest.mark.parametrize("kind", BASELINES)
def test_baselines_match_naive_loops_and_ignore_unknowns(kind):
    rng = random.Random(0)
    for _ in range(200):
        w, mask, groups, kinds = batch(rng)
        got = baseline(w, mask, kind, groups, kinds)
        want = naive_baseline(w, mask, kind, groups, kinds)
        assert torch.equal(torch.isnan(got), torch.isnan(want))
        ok = ~torch.isnan(want)
        assert torch.allclose(got[ok], want[ok], atol=1e-12)
        assert (got[~mask] == 0).all()


def test_turn_mean_on_a_hand_computed_batch():
    w = torch.tensor([[3.0, 2.0, 1.0], [1.0, NAN, 0.0], [2.0, 0.0, 0.0]])
    mask = torch.tensor([[1, 1, 1], [1, 1, 1], [1, 1, 0]], dtype=torch.bool)
    b = baseline(w, mask, "turn_mean")
    # index 0: (3+1+2)/3; index 1: NaN ignored -> (2+0)/2; index 2: (1+0)/2 (third row is padding)
    assert torch.allclose(b, torch.tensor([[2.0, 1.0, 0.5], [2.0, 1.0, 0.5], [2.0, 1.0, 0.0]],
                                          dtype=torch.float64))
    a = shape_weights(w, mask, "turn_mean")
    assert torch.isnan(a[1, 1]) and a[2, 2] == 0
    assert torch.allclose(a[0], torch.tensor([1.0, 1.0, 0.5]))


def test_group_loo_uses_only_other_dialogues_of_the_group():
    w = torch.tensor([[1.0, 4.0], [3.0, 2.0], [10.0, 10.0], [NAN, 6.0]])
    mask = torch.ones(4, 2, dtype=torch.bool)
    groups = torch.tensor([7, 7, 9, 7])
    b = baseline(w, mask, "group_loo", groups)
    assert b[0].tolist() == [3.0, 4.0]  # (3) and (2+6)/2
    assert b[1].tolist() == [1.0, 5.0]  # (1) and (4+6)/2
    assert torch.isnan(b[2]).all()  # alone in its group: no baseline, never a made-up 0
    assert b[3].tolist() == [2.0, 3.0]
    with pytest.raises(ValueError, match="^groups:"):
        baseline(w, mask, "group_loo")


def test_turn_kind_compares_only_other_dialogues_turns_of_the_same_kind_and_index():
    # kinds: 0 = filler, 1 = ask of an open fact, 2 = probe
    w = torch.tensor([[1.0, 2.0, 5.0], [3.0, 0.5, 1.0], [2.0, 1.5, NAN], [9.0, 4.0, 0.0]])
    kinds = torch.tensor([[1, 0, 2], [1, 0, 2], [1, 2, 2], [0, 0, 2]])
    mask = torch.tensor([[1, 1, 1], [1, 1, 1], [1, 1, 1], [1, 1, 0]], dtype=torch.bool)
    b = baseline(w, mask, "turn_kind", kinds=kinds)
    assert b[0].tolist() == [2.5, 2.25, 1.0]  # (3+2)/2; kind 0 at index 1: (0.5+4)/2; probe: 1 (row 2's is NaN)
    assert b[1].tolist() == [1.5, 3.0, 5.0]
    assert b[2, 0] == 2.0 and torch.isnan(b[2, 1])  # the only probe at index 1: no peer, no baseline
    assert b[2, 2] == 3.0  # its own weight is unknown, its peers' are not: (5+1)/2
    assert torch.isnan(b[3, 0]) and b[3, 1] == 1.25 and b[3, 2] == 0  # padding stays 0
    a = shape_weights(w, mask, "turn_kind", kinds=kinds)
    assert torch.isnan(a[2, 1]) and torch.isnan(a[2, 2]) and a[0, 0] == -1.5
    with pytest.raises(ValueError, match="^kinds:"):
        baseline(w, mask, "turn_kind")


def test_turn_kind_without_kinds_in_the_data_is_leave_one_out_turn_mean():
    rng = random.Random(3)
    for _ in range(50):
        w, mask, _, kinds = batch(rng)
        same = torch.zeros_like(kinds)
        got = baseline(w, mask, "turn_kind", kinds=same)
        B = w.shape[0]
        want = naive_baseline(w, mask, "group_loo", torch.zeros(B, dtype=torch.long))
        assert torch.equal(torch.isnan(got), torch.isnan(want))
        ok = ~torch.isnan(want)
        assert torch.allclose(got[ok], want[ok], atol=1e-12)


def test_standardized_weights_have_zero_mean_unit_std_and_keep_nan():
    rng = random.Random(1)
    for _ in range(50):
        w, mask, _, _ = batch(rng)
        a = shape_weights(w, mask, "none", standardize=True)
        known = mask & ~torch.isnan(a)
        if known.sum() < 2 or w[known].std() < 1e-2:  # eps=1e-8 is then negligible
            continue
        assert abs(a[known].mean().item()) < 1e-9
        assert a[known].std(unbiased=False).item() == pytest.approx(1.0, abs=1e-6)
        assert torch.equal(torch.isnan(a), torch.isnan(w) & mask)
        assert (a[~mask] == 0).all()


def test_unknown_baseline_kind_raises():
    with pytest.raises(ValueError, match="^baseline:"):
        baseline(torch.zeros(1, 1), torch.ones(1, 1, dtype=torch.bool), "median")


def test_clipping_bounds_shaped_weights_and_keeps_unknowns():
    w = torch.tensor([[3.0, -4.0, NAN], [0.5, -0.5, 2.0]], dtype=torch.float64)
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]], dtype=torch.bool)
    a = shape_weights(w, mask, "none", clip=(-1.0, None))
    assert a[0, :2].tolist() == [3.0, -1.0] and torch.isnan(a[0, 2])
    assert a[1].tolist() == [0.5, -0.5, 0.0]  # padding stays 0
    b = shape_weights(w, mask, "none", clip=(-1.0, 1.0))
    assert b[0, 0] == 1.0
