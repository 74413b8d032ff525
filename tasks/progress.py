"""Progress events: the flow reports its phase, its plan, each computed micro-batch and each
finished shard; the CLI (a live display) and the Prefect progress artifact listen.

Listeners live in the driver process (the flow runs in the CLI's process), so a listener sees
events as they happen without threading a callback through the request or the flow's parameters.

Micro-batches are computed inside Ray actors, in other processes. While a pool runs, the driver
opens a *channel*: a tiny named Ray actor (no CPU reserved) that workers send ``(shard, rows)``
to, fire-and-forget, one call per micro-batch; a driver thread drains it a few times a second and
emits :class:`RowsDone` here. Nothing is opened when nobody listens, and a worker that finds no
channel stops looking for that run. Shard results stay authoritative: when a shard finishes, its
:class:`~augflow.schemas.records.ShardResult` replaces the partial count of its batches (a retried
shard is not counted twice).

A listener that raises is logged and dropped from that event: progress never fails a run.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from augflow.schemas.records import Plan, ShardResult

log = logging.getLogger(__name__)

#: The phases a run goes through, in order (``done`` once the outcome is known).
PHASES = ("starting", "planning", "computing", "validating", "registering", "done")


@dataclass(frozen=True)
class Planned:
    """The plan is known: ``total_rows`` output rows (carried ones included) in ``shards`` shards."""

    total_rows: int
    shards: int

    @classmethod
    def of(cls, plan: Plan) -> Planned:
        return cls(total_rows=plan.num_rows, shards=len(plan.shards) + len(plan.carried))


@dataclass(frozen=True)
class Phase:
    """The run entered phase ``name`` (one of :data:`PHASES`)."""

    name: str


@dataclass(frozen=True)
class RowsDone:
    """A micro-batch of ``rows`` items of shard ``shard_id`` went through the model."""

    shard_id: str
    rows: int


Event = Planned | Phase | RowsDone | ShardResult
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


def has_listeners() -> bool:
    with _lock:
        return bool(_listeners)


def emit(event: Event) -> None:
    with _lock:
        targets = list(_listeners)
    for listener in targets:
        try:
            listener(event)
        except Exception:
            log.exception("progress listener %r failed on %r", listener, event)


def phase(name: str) -> None:
    emit(Phase(name))


# --- micro-batches from Ray workers -------------------------------------------------------------


def channel_name(run: str) -> str:
    """The named actor of a run's channel (``run``: the request hash)."""
    return f"augflow-progress-{run[:16]}"


class _Sink:
    """The channel's actor: collects ``(shard, rows)`` pairs until the driver takes them."""

    def __init__(self) -> None:
        self.items: list[tuple[str, int]] = []

    def add(self, shard_id: str, rows: int) -> None:
        self.items.append((shard_id, rows))

    def take(self) -> list[tuple[str, int]]:
        out, self.items = self.items, []
        return out


class RemoteChannel:
    """The driver's end of a run's channel; :meth:`close` drains it one last time and ends it."""

    POLL_SECONDS = 0.25

    def __init__(self, actor: Any | None) -> None:
        self._actor = actor
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        if actor is not None:
            self._thread = threading.Thread(target=self._poll, name="augflow-progress", daemon=True)
            self._thread.start()

    def _drain(self) -> None:
        import ray

        if self._actor is None:
            return
        for shard_id, rows in ray.get(self._actor.take.remote(), timeout=10):
            emit(RowsDone(shard_id, rows))

    def _poll(self) -> None:
        while not self._stop.wait(self.POLL_SECONDS):
            try:
                self._drain()
            except Exception as exc:  # progress must never fail a run
                log.debug("progress channel: %s", exc)
                return

    def close(self) -> None:
        if self._actor is None:
            return
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        import ray

        try:
            self._drain()
        except Exception as exc:
            log.debug("progress channel: %s", exc)
        ray.kill(self._actor)
        self._actor = None


def open_remote_channel(run: str, *, always: bool = False) -> RemoteChannel:
    """Open run ``run``'s channel (call with Ray initialised); a no-op when nobody listens,
    unless ``always`` (a pool started before its listeners attach: issue 14's early start)."""
    if not (always or has_listeners()):
        return RemoteChannel(None)
    import ray

    try:
        actor = (
            ray.remote(_Sink)
            .options(name=channel_name(run), num_cpus=0, get_if_exists=True)
            .remote()
        )
    except Exception as exc:
        log.debug("progress channel not opened: %s", exc)
        return RemoteChannel(None)
    return RemoteChannel(actor)


def rows_reporter(run: str, shard_id: str) -> Callable[[int], None]:
    """The reporter of one attempt at one shard: call it with each computed micro-batch's rows.

    It goes to this process's listeners when there are any (the flow computing in-process), else
    to the run's channel when running in a Ray worker. The channel is looked up once per attempt
    (one GCS call), never cached longer: a long-lived actor serves many runs, and a re-run of the
    same request opens a new channel under the same name.
    """
    looked_up = False
    actor: Any | None = None

    def report(rows: int) -> None:
        nonlocal looked_up, actor
        if has_listeners():
            emit(RowsDone(shard_id, rows))
            return
        if not looked_up:
            actor, looked_up = _channel_actor(run), True
        if actor is not None:
            try:
                actor.add.remote(shard_id, rows)
            except Exception:  # the driver closed the channel: this attempt is done reporting
                actor = None

    return report


def _channel_actor(run: str) -> Any | None:
    ray = sys.modules.get("ray")  # not a Ray worker unless Ray is loaded and initialised
    if ray is None or not ray.is_initialized():
        return None
    try:
        return ray.get_actor(channel_name(run))
    except Exception:
        return None


# --- a view of the events ----------------------------------------------------------------------


class Tracker:
    """Folds events into what a progress display shows: phase, rows done of the total, the rate
    of computed rows and the time left.

    Rows of reused shards (committed earlier, carried from an older version) count as done but
    not towards the rate. The rate runs from the first computed micro-batch, so start-up and the
    model load do not drag it down; it is unknown until a second micro-batch arrives.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self.phase = "starting"
        self.total: int | None = None
        self._final: dict[str, int] = {}
        self._partial: dict[str, int] = {}
        self._computed_final = 0
        self._first: tuple[float, int] | None = None  # (time, rows) of the first computed batch
        self._last = 0.0  # time of the latest computed batch or shard

    def on(self, event: Event) -> None:
        with self._lock:
            if isinstance(event, Planned):
                self.total = event.total_rows
            elif isinstance(event, Phase):
                self.phase = event.name
            elif isinstance(event, RowsDone):
                if event.shard_id in self._final:
                    return  # a late batch report of a shard already counted whole
                self._partial[event.shard_id] = self._partial.get(event.shard_id, 0) + event.rows
                self._last = self._clock()
                if self._first is None:
                    self._first = (self._last, event.rows)
            elif isinstance(event, ShardResult):
                rows = event.num_rows + event.num_quarantined
                self._partial.pop(event.shard_id, None)
                if event.shard_id not in self._final and event.status == "computed":
                    self._computed_final += rows
                    self._last = self._clock()
                    if self._first is None:
                        self._first = (self._last, rows)
                self._final[event.shard_id] = rows

    @property
    def done(self) -> int:
        with self._lock:
            n = sum(self._final.values()) + sum(self._partial.values())
        return min(n, self.total) if self.total is not None else n

    @property
    def computed(self) -> int:
        with self._lock:
            return self._computed_final + sum(self._partial.values())

    def rate(self) -> float | None:
        """Computed rows per second since the first computed batch (None until measurable); once
        every planned row is done, the rate up to the last one (it does not decay afterwards)."""
        if self._first is None:
            return None
        t0, first_rows = self._first
        finished = self.total is not None and self.done >= self.total
        elapsed = (self._last if finished else self._clock()) - t0
        rows = self.computed - first_rows
        if elapsed <= 0 or rows <= 0:
            return None
        return rows / elapsed

    def eta(self) -> float | None:
        """Seconds until every planned row is done at the current rate (None when unknown)."""
        rate = self.rate()
        if rate is None or self.total is None:
            return None
        return max(0.0, (self.total - self.done) / rate)
