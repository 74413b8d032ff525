"""Process-local progress events from the flow to whoever listens (the CLI)."""

from __future__ import annotations

import threading

import pytest

from augflow.schemas.records import Plan, ShardResult, ShardSpec
from augflow.tasks import progress


def _result(sid: str) -> ShardResult:
    return ShardResult(
        shard_id=sid,
        data_file=f"runs/x/shards/{sid}.parquet",
        quarantine_file=None,
        num_rows=2,
        num_quarantined=0,
        data_bytes=1,
        seconds=0.1,
        status="computed",
    )


def test_planned_counts_carried_shards_and_rows() -> None:
    plan = Plan(
        dataset="d",
        request_hash="h",
        version="v",
        shards=(
            ShardSpec(shard_id="a", index=0, count=3),
            ShardSpec(shard_id="b", index=1, count=3),
        ),
        num_rows=11,
        carried=(_result("c"),),
    )
    assert progress.Planned.of(plan) == progress.Planned(total_rows=11, shards=3)


def test_listeners_see_events_in_order_only_while_listening() -> None:
    seen: list[progress.Event] = []
    other: list[progress.Event] = []
    progress.emit(_result("before"))  # nobody listens: dropped, no error
    with progress.listening(seen.append):
        progress.emit(progress.Planned(total_rows=4, shards=2))
        with progress.listening(other.append):
            progress.emit(_result("s1"))
        progress.emit(_result("s2"))
    progress.emit(_result("after"))
    assert seen == [progress.Planned(total_rows=4, shards=2), _result("s1"), _result("s2")]
    assert other == [_result("s1")]


def test_a_listener_is_removed_even_when_the_block_raises() -> None:
    seen: list[progress.Event] = []
    with pytest.raises(RuntimeError), progress.listening(seen.append):
        raise RuntimeError("flow failed")
    progress.emit(_result("late"))
    assert seen == []


def test_events_from_worker_threads_reach_the_listener() -> None:
    seen: list[progress.Event] = []
    with progress.listening(seen.append):
        threads = [
            threading.Thread(target=progress.emit, args=(_result(f"s{i}"),)) for i in range(8)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert sorted(e.shard_id for e in seen if isinstance(e, ShardResult)) == [
        f"s{i}" for i in range(8)
    ]
