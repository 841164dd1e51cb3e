"""Packed samples, split ranges, seeded shuffling, resumable micro-batches; the LR schedule."""

from __future__ import annotations

import numpy as np
import pytest

from jobs.indexed_dataset import IndexedDatasetWriter, dtype_for_vocab
from trainer.data import MicroBatches, build_splits, split_ranges
from trainer.schedule import lr_at


@pytest.fixture
def numbered(tmp_path):
    """20 documents whose tokens are 1000*doc + position, so each token says where it came from."""
    prefix = tmp_path / "n_text_document"
    with IndexedDatasetWriter(prefix, dtype_for_vocab(100_000)) as w:
        for d in range(20):
            w.add_document(np.arange(10 + d) + 1000 * d)
    return str(prefix)


def test_split_ranges_cover_all_documents():
    r = split_ranges(1000, [0.995, 0.004, 0.001])
    assert (r["train"], r["valid"], r["test"]) == (range(0, 995), range(995, 999), range(999, 1000))


def test_samples_are_packed_contiguously_across_documents(numbered):
    splits = build_splits(numbered, [0.75, 0.25, 0.0], seq_len=8, seed=1)
    train = splits["train"]
    assert splits["test"] is None and len(train) == (sum(10 + d for d in range(15)) - 1) // 8
    seen = []
    for k in range(len(train)):
        s = train.sample(k)
        assert s.shape == (9,)
        seen.append(s)
        docs = s // 1000
        assert docs.max() < 15  # train documents only
        for a, b in zip(s[:-1], s[1:], strict=True):  # within a document, positions count up
            assert b == a + 1 or b // 1000 != a // 1000
    # epoch 0 uses every token of the split once (plus the shared boundary tokens)
    assert len({int(t) for s in seen for t in s}) >= len(train) * 8


def test_shuffle_is_seeded_and_epochs_differ(numbered):
    a = build_splits(numbered, [1, 0, 0], 8, seed=1)["train"]
    b = build_splits(numbered, [1, 0, 0], 8, seed=1)["train"]
    c = build_splits(numbered, [1, 0, 0], 8, seed=2)["train"]
    n = len(a)
    assert all(np.array_equal(a.sample(k), b.sample(k)) for k in range(2 * n))
    assert not all(np.array_equal(a.sample(k), c.sample(k)) for k in range(n))
    assert not all(np.array_equal(a.sample(k), a.sample(k + n)) for k in range(n))


def test_micro_batches_resume_and_split_over_ranks(numbered):
    train = build_splits(numbered, [1, 0, 0], 8, seed=3)["train"]
    one = MicroBatches(train, 2)
    stream = [next(one) for _ in range(6)]
    resumed = MicroBatches(train, 2)
    first = MicroBatches(train, 2)
    next(first), next(first)
    resumed.load_state_dict(first.state_dict())
    assert all(np.array_equal(next(resumed), stream[i]) for i in range(2, 6))
    r0, r1 = MicroBatches(train, 2, rank=0, world=2), MicroBatches(train, 2, rank=1, world=2)
    for i in range(0, 6, 2):
        assert np.array_equal(next(r0), stream[i]) and np.array_equal(next(r1), stream[i + 1])


def test_too_short_split_is_refused(numbered):
    from jobs.cli import JobError

    with pytest.raises(JobError, match="valid split .* shorter than one sample"):
        build_splits(numbered, [0.95, 0.05, 0], seq_len=64, seed=1)


def test_lr_schedule_warmup_cosine_linear_min_lr():
    assert lr_at(0, 1.0, 0.1, 10, 100, "cosine") == 0.0
    assert lr_at(5, 1.0, 0.1, 10, 100, "cosine") == pytest.approx(0.5)
    assert lr_at(10, 1.0, 0.1, 10, 100, "cosine") == pytest.approx(1.0)
    assert lr_at(55, 1.0, 0.1, 10, 100, "cosine") == pytest.approx(0.55)
    assert lr_at(55, 1.0, 0.1, 10, 100, "linear") == pytest.approx(0.55)
    assert lr_at(100, 1.0, 0.1, 10, 100, "cosine") == pytest.approx(0.1)
    assert lr_at(500, 1.0, 0.1, 10, 100, "linear") == pytest.approx(0.1)
    assert lr_at(500, 1.0, 0.1, 10, 100, "constant") == 1.0
