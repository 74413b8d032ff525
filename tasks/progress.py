"""Process-local progress events: the CLI listens, the executor reports each finished shard.

The flow runs in the CLI's process, so a listener here sees shards as Ray returns them without
threading a callback through the request or the flow's parameters.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from augflow.schemas.records import ShardResult

Listener = Callable[[ShardResult], None]
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


def emit(result: ShardResult) -> None:
    with _lock:
        targets = list(_listeners)
    for listener in targets:
        listener(result)
