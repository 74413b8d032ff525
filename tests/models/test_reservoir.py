"""The seeded stream sample (models/reservoir.py): exact while it fits, uniform and repeatable
once it overflows, whatever the batch sizes the stream arrives in."""

from __future__ import annotations

import numpy as np

from augflow.models.reservoir import Reservoir


def test_keeps_every_row_while_it_fits() -> None:
    r = Reservoir(10, 2, seed=0)
    rows = np.arange(16, dtype=np.float32).reshape(8, 2)
    r.add(rows[:3])
    r.add(rows[3:])
    assert r.filled == r.seen == 8
    np.testing.assert_array_equal(r.data, rows)


def test_an_overflowing_stream_is_sampled_uniformly_and_repeatably() -> None:
    stream = np.arange(100_000, dtype=np.float64)

    def sample(seed: int, batch: int) -> np.ndarray:
        r = Reservoir(2_000, 1, seed=seed, dtype=np.float64)
        for start in range(0, len(stream), batch):
            r.add(stream[start : start + batch])
        assert r.filled == 2_000 and r.seen == len(stream)
        return r.data[:, 0].copy()

    a, b = sample(0, 1_000), sample(0, 1_000)
    np.testing.assert_array_equal(a, b)  # seeded: the same stream keeps the same rows
    assert len(np.unique(a)) == 2_000
    # uniform over the whole stream, not biased to its start or end: each decile holds ~10%
    counts = np.histogram(a, bins=10, range=(0, len(stream)))[0]
    assert counts.min() > 150 and counts.max() < 250, counts
    assert not np.array_equal(a, sample(1, 1_000))
