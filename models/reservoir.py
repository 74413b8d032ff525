"""A seeded uniform sample of a stream in fixed memory, shared by the set checks' feature
reservoirs (models/setmetrics.py) and the effect checks' medians (tasks/quality_sets.py). No torch:
the effect checks run in the flow process."""

from __future__ import annotations

import numpy as np


class Reservoir:
    """A uniform random sample of at most ``capacity`` rows of a stream (Vitter's algorithm R),
    seeded, so the same stream always keeps the same rows. Rows are added a batch at a time."""

    def __init__(
        self, capacity: int, dim: int, seed: int, dtype: type[np.floating] = np.float32
    ) -> None:
        self.capacity = int(capacity)
        self._buf = np.zeros((self.capacity, dim), dtype=dtype)
        self.filled = 0
        self.seen = 0
        self._rng = np.random.default_rng(seed)

    @property
    def data(self) -> np.ndarray:
        return self._buf[: self.filled]

    def add(self, rows: np.ndarray) -> None:
        rows = np.asarray(rows).reshape(len(rows), -1)
        take = min(self.capacity - self.filled, len(rows))
        if take > 0:
            self._buf[self.filled : self.filled + take] = rows[:take]
            self.filled += take
            self.seen += take
            rows = rows[take:]
        if len(rows):
            # algorithm R, vectorised: the i-th row of the stream replaces a uniformly drawn slot
            # of [0, i) when it falls below capacity; on a repeated slot the later row wins, as
            # it would one row at a time
            positions = self.seen + np.arange(1, len(rows) + 1)
            slots = (self._rng.random(len(rows)) * positions).astype(np.int64)
            keep = slots < self.capacity
            self._buf[slots[keep]] = rows[keep]
            self.seen += len(rows)
