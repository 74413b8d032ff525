"""Process-local progress events from the flow to whoever listens (the CLI)."""

from __future__ import annotations

import threading
import time

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


def test_a_failing_listener_never_fails_the_run() -> None:
    seen: list[progress.Event] = []

    def broken(event: progress.Event) -> None:
        raise KeyError("display gone")

    with progress.listening(broken), progress.listening(seen.append):
        progress.phase("computing")
    assert seen == [progress.Phase("computing")]


class _Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _shard(sid: str, rows: int, status: str = "computed", quarantined: int = 0) -> ShardResult:
    return _result(sid).model_copy(
        update={"num_rows": rows, "num_quarantined": quarantined, "status": status}
    )


def test_tracker_counts_batches_then_shards_and_times_only_computed_rows() -> None:
    clock = _Clock()
    t = progress.Tracker(clock)
    assert (t.phase, t.total, t.done, t.rate(), t.eta()) == ("starting", None, 0, None, None)
    for event in (progress.Planned(total_rows=20, shards=4), progress.Phase("computing")):
        t.on(event)
    # a shard committed by an earlier run: done, but no part of the rate
    t.on(_shard("old", 5, status="skipped"))
    clock.now = 130.0  # start-up and the model load: not part of the rate either
    t.on(progress.RowsDone("a", 1))
    assert t.rate() is None and t.done == 6  # one batch: no rate yet
    clock.now = 132.0
    t.on(progress.RowsDone("a", 2))
    t.on(progress.RowsDone("b", 2))
    assert t.done == 10 and t.rate() == 2.0  # 4 rows after the first batch, in 2 s
    assert t.eta() == 5.0  # 10 rows left at 2 rows/s
    # the shard's result replaces its batches (3 rows computed, 1 quarantined at decode)
    t.on(_shard("a", 3, quarantined=1))
    t.on(progress.RowsDone("a", 1))  # a late batch report of a counted shard
    assert t.done == 11 and t.computed == 6
    clock.now = 134.0
    t.on(_shard("b", 5))
    t.on(_shard("c", 6))
    assert t.done == 20 and t.eta() == 0.0
    rate = t.rate()
    clock.now = 200.0  # validation and registration take a while: the rate stays put
    t.on(progress.Phase("validating"))
    assert t.rate() == rate and t.phase == "validating"


def test_a_reporter_reaches_a_listener_in_this_process() -> None:
    seen: list[progress.Event] = []
    progress.rows_reporter("f" * 64, "s1")(3)  # nobody listens, no Ray: a no-op
    with progress.listening(seen.append):
        progress.rows_reporter("f" * 64, "s1")(2)
    assert seen == [progress.RowsDone("s1", 2)]


def test_the_shard_worker_reports_every_micro_batch(tiny_model, tmp_path) -> None:
    from augflow.schemas import parse_request
    from augflow.tasks.plan import plan_request
    from augflow.tasks.shard_worker import ShardWorker

    request = parse_request(
        {
            "dataset": "p",
            "operation": {"kind": "generate", "num_images": 5},
            "model": {"id": str(tiny_model)},
            "output": str(tmp_path),
            "steps": 2,
            "shard_size": 5,
            "compute": {"micro_batch": 2},
        }
    )
    seen: list[progress.Event] = []
    with progress.listening(seen.append):
        ShardWorker(request, device="cpu").process(plan_request(request).shards[0])
    sid = plan_request(request).shards[0].shard_id
    assert seen == [progress.RowsDone(sid, 2), progress.RowsDone(sid, 2), progress.RowsDone(sid, 1)]


class _ShardActorLike:
    """What a shard actor does for progress (tasks/execute.py ``_ShardActor``): counts its
    micro-batches here, answers ``take_progress(run)``."""

    def __init__(self) -> None:
        progress.collect_here()

    def attempt(self, run: str, shard: str, batches: int) -> int:
        report = progress.rows_reporter(run, shard)  # what the shard worker makes per attempt
        for _ in range(batches):
            report(4)
        return batches

    def take_progress(self, run: str) -> list[tuple[str, int]]:
        return progress.take_collected(run)


def _rows(seen: list[progress.Event]) -> dict[str, int]:
    out: dict[str, int] = {}
    for e in seen:
        if isinstance(e, progress.RowsDone):
            out[e.shard_id] = out.get(e.shard_id, 0) + e.rows
    return out


@pytest.mark.slow
def test_batches_computed_in_ray_actors_reach_the_driver(ray_local: None) -> None:
    import ray

    actor_cls = ray.remote(num_cpus=0)(_ShardActorLike)
    actors = [actor_cls.remote() for _ in range(2)]
    run, other = "a" * 64, "d" * 64
    seen: list[progress.Event] = []
    with progress.listening(seen.append):
        channel = progress.open_remote_channel(run, lambda: actors)
        assert channel.open
        calls = [actors[0].attempt.remote(run, "s1", 3), actors[1].attempt.remote(run, "s2", 2)]
        # a warm actor serves another run meanwhile: that run's batches are not this one's
        calls.append(actors[0].attempt.remote(other, "x1", 5))
        assert ray.get(calls) == [3, 2, 5]
        channel.close()  # takes what the polls have not
    assert _rows(seen) == {"s1": 12, "s2": 8}

    # the other run's driver takes its own batches, once
    seen.clear()
    with progress.listening(seen.append):
        channel = progress.open_remote_channel(other, lambda: actors)
        channel.close()
        progress.open_remote_channel(other, lambda: actors).close()
    assert _rows(seen) == {"x1": 20}

    # nobody listening: no channel, and the actors keep counting without anyone to ask
    assert not progress.open_remote_channel(run, lambda: actors).open
    assert ray.get(actors[1].attempt.remote(run, "s3", 2)) == 2
    for actor in actors:
        ray.kill(actor)


@pytest.mark.slow
def test_a_display_that_attaches_after_the_pool_started_sees_every_batch(
    ray_local: None,
) -> None:
    # issue 14's early start: the pool starts before the CLI's display attaches
    import ray

    actor = ray.remote(num_cpus=0)(_ShardActorLike).remote()
    got = {}
    for always in (True, False):
        run = ("b" if always else "c") * 64
        assert not progress.has_listeners()
        channel = progress.open_remote_channel(run, lambda: [actor], always=always)
        assert channel.open is always
        assert ray.get(actor.attempt.remote(run, "s1", 1)) == 1  # before anyone listens
        time.sleep(3 * progress.RemoteChannel.POLL_SECONDS)  # polls pass meanwhile
        seen: list[progress.Event] = []
        with progress.listening(seen.append):
            assert ray.get(actor.attempt.remote(run, "s1", 3)) == 3
            channel.close()
        got[always] = _rows(seen)
    assert got[True] == {"s1": 16}  # every batch, the one before the display included
    assert got[False] == {}  # a pool whose runner never listens opens no channel
    ray.kill(actor)


def test_an_actor_keeps_the_counts_of_a_bounded_number_of_runs(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(progress, "_collecting", True)
    monkeypatch.setattr(progress, "_collected", {})
    for k in range(progress.MAX_RUNS_KEPT + 10):
        progress.rows_reporter(f"run{k}", "s")(1)  # runs nobody follows
    assert len(progress._collected) == progress.MAX_RUNS_KEPT
    assert progress.take_collected("run0") == []  # the oldest went first
    last = f"run{progress.MAX_RUNS_KEPT + 9}"
    assert progress.take_collected(last) == [("s", 1)]
    assert progress.take_collected(last) == []  # taken once
