"""The simulated device of the benchmarks: distinct photo-like images that cost the host no copy."""

from __future__ import annotations

import torch

from bench.fake_model import SleepPipeline


def test_smooth_batches_are_distinct_views_not_copies() -> None:
    pipe = SleepPipeline(0.01, 64, "smooth")
    gens = [torch.Generator().manual_seed(s) for s in (11, 12, 13, 14)]
    out = pipe(gens, (64, 64))
    assert out.shape == (4, 3, 64, 64)
    assert out.min() >= -1 and out.max() <= 1
    # every image differs from every other one
    flat = out.reshape(4, -1)
    assert all(not torch.equal(flat[i], flat[j]) for i in range(4) for j in range(i + 1, 4))
    # one view of the cached picture: making a batch copies no pixels
    tall = pipe._tall[(64, 64)]
    assert out.untyped_storage().data_ptr() == tall.untyped_storage().data_ptr()
    # the device time is recorded, and a later batch with another first seed looks different
    assert len(pipe.busy) == 1 and pipe.busy[0][1] - pipe.busy[0][0] >= 0.01
    other = pipe([torch.Generator().manual_seed(16)], (64, 64))
    assert not torch.equal(other[0], out[0])
