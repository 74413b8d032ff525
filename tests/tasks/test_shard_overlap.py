"""The shard worker holds its compute lock for the device work only: with two shards in flight
(the actor's max_concurrency), the second computes while the first one's PNGs still encode."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

import augflow.models.runner as runner
from augflow.schemas import parse_request
from augflow.tasks.plan import plan_request
from augflow.tasks.shard_worker import ShardWorker


@pytest.mark.slow
def test_the_next_shard_computes_while_this_one_encodes(
    tiny_model: Path, tmp_path: Path, monkeypatch
) -> None:
    request = parse_request(
        {
            "dataset": "overlap",
            "operation": {"kind": "generate", "num_images": 4},
            "model": {"id": str(tiny_model)},
            "output": str(tmp_path),
            "steps": 2,
            "shard_size": 2,
        }
    )
    first, second = plan_request(request).shards
    worker = ShardWorker(request, device="cpu", encode_threads=1)
    computing: list[str] = []
    second_computed = threading.Event()
    family = worker.model.family
    real_compute, real_encode = family.compute, runner.encode_png_array

    def compute(items, sources, generators):
        out = real_compute(items, sources, generators)
        computing.append(items[0].source_id)
        if items[0].source_id.endswith(f"{second.first:09d}"):
            second_computed.set()
        return out

    def encode(pixels):  # the first shard's images wait for the second shard's compute
        if not second_computed.wait(120):
            raise TimeoutError("the second shard never computed: the lock covers encoding")
        return real_encode(pixels)

    monkeypatch.setattr(family, "compute", compute)
    monkeypatch.setattr(runner, "encode_png_array", encode)
    results: dict[str, object] = {}

    def run(shard) -> None:
        results[shard.shard_id] = worker.process(shard)

    a = threading.Thread(target=run, args=(first,))
    a.start()
    while not computing:  # the first shard holds the lock first
        a.join(0.05)
    b = threading.Thread(target=run, args=(second,))
    b.start()
    a.join(180)
    b.join(180)
    assert [results[s.shard_id].num_rows for s in (first, second)] == [2, 2]
    assert all(results[s.shard_id].num_quarantined == 0 for s in (first, second))
