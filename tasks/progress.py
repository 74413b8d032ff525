"""Process-local progress events: the flow reports its plan and each finished shard, the CLI
listens.

The flow runs in the CLI's process, so a listener here sees events as they happen without
threading a callback through the request or the flow's parameters (and without planning twice to
learn the total).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from augflow.schemas.records import Plan, ShardResult


@dataclass(frozen=True)
class Planned:
    """The plan is known: ``total_rows`` output rows (carried ones included) in ``shards`` shards."""

    total_rows: int
    shards: int

    @classmethod
    def of(cls, plan: Plan) -> Planned:
        return cls(total_rows=plan.num_rows, shards=len(plan.shards) + len(plan.carried))


Event = Planned | ShardResult
Listener = Callable[[Event], None]
_listeners: list[Listener] = []
_lock = threading.Lock()


@contextmanager
def listening(listener: Listener) -> Iterator[None]:
    with _lock:
        _listeners.append(listener)
    try:
        yield
    finally:
        with _lock:
            _listeners.remove(listener)


def emit(event: Event) -> None:
    with _lock:
        targets = list(_listeners)
    for listener in targets:
        listener(event)
