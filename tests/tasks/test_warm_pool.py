"""A warm actor's own bookkeeping (tasks/warm_pool.py IdleTimer): leases, calls, idle exit and
making room for another model. The actors themselves, reused across driver processes on a
long-lived Ray, are tested in tests/flows/test_worker.py."""

from __future__ import annotations

import threading
import time

import pytest

from augflow.schemas import parse_request
from augflow.tasks import warm_pool
from augflow.tasks.ray_pool import PoolLayout


@pytest.fixture
def left(monkeypatch) -> threading.Event:
    """Set when the timer ends its actor (instead of ending this test process's actor)."""
    event = threading.Event()
    monkeypatch.setattr(warm_pool, "_leave", event.set)
    return event


def test_an_unused_actor_leaves_after_its_idle_timeout(left: threading.Event) -> None:
    timer = warm_pool.IdleTimer(0.6, poll_s=0.05)
    assert not left.wait(0.3)
    assert left.wait(5)
    assert timer.acquire() is False  # on its way out: a driver must start a fresh actor


def test_calls_and_leases_keep_it(left: threading.Event) -> None:
    timer = warm_pool.IdleTimer(0.5, poll_s=0.05)
    with timer.busy():  # a shard that takes longer than the idle timeout
        assert not left.wait(1.0)
    assert timer.acquire()  # a lease resets the clock, a release too
    time.sleep(0.3)
    timer.release()
    assert not left.wait(0.3)
    assert left.wait(5)


def test_retire_makes_room_only_when_nobody_uses_it(left: threading.Event) -> None:
    timer = warm_pool.IdleTimer(600, poll_s=0.05)
    assert timer.acquire()
    assert timer.retire_if_unused() is False  # a live lease holds it
    timer.release()
    with timer.busy():
        assert timer.retire_if_unused() is False  # a shard is running
    assert timer.retire_if_unused() is True
    assert left.wait(5)
    assert timer.acquire() is False


def test_the_warm_key_follows_what_the_loaded_pipeline_depends_on(tmp_path) -> None:
    def key(**over: object) -> str:
        body: dict[str, object] = {
            "dataset": "k",
            "operation": {"kind": "generate", "num_images": 4},
            "model": {"id": str(tmp_path)},
        }
        layout = over.pop("layout", PoolLayout("cpu", 1, 1, 1, 0, 0))
        body.update(over)
        return warm_pool.warm_key(parse_request(body), layout)

    base = key()
    # other jobs with the same model share actors; micro_batch is chosen per call
    assert key(dataset="other", seed=3, compute={"micro_batch": 7}) == base
    assert key(operation={"kind": "generate", "num_images": 99}, steps=9) == base
    # what shapes the loaded pipeline does not
    assert key(compute={"channels_last": True}) != base
    assert key(model={"id": str(tmp_path), "scheduler": "euler"}) != base
    assert key(layout=PoolLayout("cpu", 1, 2, 2, 0, 0)) != base  # threads change bytes
    assert key(layout=PoolLayout("cuda", 1, 1, 1, 1, 4)) != base
