import random

import numpy as np
import pytest

from ppg.train.batching import Example, collate, length_batches


def padding_share(lengths, batches):
    real = sum(lengths)
    padded = sum(len(b) * max(lengths[i] for i in b) for b in batches)
    return 1 - real / padded


@pytest.mark.parametrize("batch_size", [2, 4, 8])
def test_length_buckets_keep_padding_under_ten_percent(batch_size):
    # lengths like the real data: long-tailed, 60 to 2,048 tokens
    rng = random.Random(0)
    lengths = [min(2048, int(rng.lognormvariate(6.3, 0.6))) + 60 for _ in range(3000)]
    batches = length_batches(lengths, batch_size, 50, seed=0, epoch=0)
    assert sorted(i for b in batches for i in b) == list(range(3000))  # every sequence once
    assert padding_share(lengths, batches) <= 0.10
    naive = [list(range(i, min(i + batch_size, 3000))) for i in range(0, 3000, batch_size)]
    assert padding_share(lengths, naive) > 0.2  # what unsorted batches would waste


def test_batches_are_reproducible_per_seed_and_epoch():
    """The same (seed, epoch) gives the same batches from a fresh list; another seed or epoch
    reorders them; every order holds each sequence once."""
    lengths = list(range(10, 210))
    runs = {(seed, epoch): length_batches(list(lengths), 4, 5, seed, epoch) for seed in (0, 1, 7) for epoch in (0, 1)}
    assert all(sorted(i for b in bs for i in b) == list(range(200)) for bs in runs.values())
    assert len({str(bs) for bs in runs.values()}) == len(runs)  # each seed and epoch its own order
    for (seed, epoch), bs in runs.items():
        assert length_batches(list(lengths), 4, 5, seed, epoch) == bs  # a second call, its own list


def test_collate_pads_right_and_marks_padding_as_non_target():
    ex = [Example(np.array([5, 6, 7]), np.array([-1, 0, 0]), np.array([1.5])),
          Example(np.array([8]), np.array([0]), np.array([2.0, np.nan]))]
    b = collate(ex, pad_id=0)
    assert b["input_ids"].tolist() == [[5, 6, 7], [8, 0, 0]]
    assert b["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert b["turn_index"].tolist() == [[-1, 0, 0], [0, -1, -1]]
    assert b["weights"][0].tolist() == [1.5, 0.0] and np.isnan(b["weights"][1, 1].item())
    assert (b["tokens"], b["padded"]) == (4, 6)
