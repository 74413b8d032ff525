"""Progress events: the flow reports its phase, its plan, each computed micro-batch and each
finished shard; the CLI (a live display) and the Prefect progress artifact listen.

Listeners live in the driver process (the flow runs in the CLI's process), so a listener sees
events as they happen without threading a callback through the request or the flow's parameters.

Micro-batches are computed inside Ray actors, in other processes. Each shard actor counts the
rows of its micro-batches per run and shard in its own process (:func:`collect_here`,
:func:`take_collected`); while a pool runs, a driver thread (the run's *channel*) asks the pool's
actors for their counts a few times a second and emits :class:`RowsDone` here. No process of its
own and no message per micro-batch: a channel costs one small call per actor per poll, and none
when nobody listens. Counts wait in the actor until someone listens, so a display that attaches
after the pool started still sees every batch. Shard results stay authoritative: when a shard
finishes, its :class:`~augflow.schemas.records.ShardResult` replaces the partial count of its
batches (a retried shard is not counted twice).

A listener that raises is logged and dropped from that event: progress never fails a run.
"""

from __future__ import annotations

import logging
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

_collecting = False
#: in a shard actor's process: run -> shard -> rows computed and not yet taken by the driver
_collected: dict[str, dict[str, int]] = {}
_collected_lock = threading.Lock()
#: runs whose counts a (warm, long-lived) actor keeps: a run nobody follows (a flow run by a
#: worker has no listener) is never taken, and the oldest such run is dropped first
MAX_RUNS_KEPT = 64


def collect_here() -> None:
    """Count micro-batches in this process for the driver to take (called by a shard actor)."""
    global _collecting
    _collecting = True


def take_collected(run: str) -> list[tuple[str, int]]:
    """The ``(shard, rows)`` counted for ``run`` since the last take; what a shard actor answers
    its run's channel. A run whose driver is gone leaves a count per shard it had here."""
    with _collected_lock:
        return list(_collected.pop(run, {}).items())


class RemoteChannel:
    """The driver's end of a run's progress: a thread that asks the actors ``actors()`` returns
    for the run's counts every :attr:`POLL_SECONDS` (each actor answers ``take_progress(run)``)
    and emits them; :meth:`close` takes them one last time. ``actors()`` should name only actors
    that have loaded their model: they answer at once, and one still loading computed nothing."""

    POLL_SECONDS = 0.25
    CLOSE_TIMEOUT_S = 5.0

    def __init__(self, run: str, actors: Callable[[], list[Any]] | None) -> None:
        self.run = run
        self._actors = actors
        self._stop = threading.Event()
        # one call in flight per actor (by id of its handle): an actor still loading its model
        # answers late, and must not collect a queue of polls meanwhile
        self._pending: dict[Any, tuple[int, Any]] = {}
        self._thread: threading.Thread | None = None
        if actors is not None:
            self._thread = threading.Thread(target=self._poll, name="augflow-progress", daemon=True)
            self._thread.start()

    @property
    def open(self) -> bool:
        return self._actors is not None

    def _ask(self) -> None:
        if self._actors is None:
            return
        asking = {key for key, _ in self._pending.values()}
        for actor in self._actors():
            if id(actor) not in asking:
                self._pending[actor.take_progress.remote(self.run)] = (id(actor), actor)

    def _collect(self, timeout: float) -> None:
        import ray

        if not self._pending:
            return
        refs = list(self._pending)
        ready, _ = ray.wait(refs, num_returns=len(refs), timeout=timeout)
        for ref in ready:
            self._pending.pop(ref)
            try:
                items = ray.get(ref)
            except Exception:  # a dead actor: its shards are retried elsewhere
                continue
            for shard_id, rows in items:
                emit(RowsDone(shard_id, rows))

    def _poll(self) -> None:
        while not self._stop.wait(self.POLL_SECONDS):
            if not has_listeners():
                continue  # the counts wait in the actors for a display that attaches later
            try:
                self._ask()
                self._collect(timeout=0)
            except Exception as exc:  # progress must never fail a run
                log.debug("progress channel: %s", exc)
                return

    def close(self) -> None:
        """Stop polling and take what the actors counted since the last poll. Call it before
        the actors go."""
        if self._actors is None:
            return
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.CLOSE_TIMEOUT_S)
        try:
            self._ask()
            self._collect(timeout=self.CLOSE_TIMEOUT_S)
        except Exception as exc:
            log.debug("progress channel: %s", exc)
        self._actors = None
        self._pending.clear()


def open_remote_channel(
    run: str, actors: Callable[[], list[Any]], *, always: bool = False
) -> RemoteChannel:
    """Follow run ``run``'s micro-batches on the actors ``actors()`` returns (call with Ray
    initialised); a closed channel when nobody listens, unless ``always`` (a pool started before
    its listeners attach: issue 14's early start)."""
    if not (always or has_listeners()):
        return RemoteChannel(run, None)
    return RemoteChannel(run, actors)


def rows_reporter(run: str, shard_id: str) -> Callable[[int], None]:
    """The reporter of one attempt at one shard: call it with each computed micro-batch's rows.

    It goes to this process's listeners when there are any (the flow computing in-process), else,
    in a shard actor (:func:`collect_here`), to the count the run's channel takes.
    """

    def report(rows: int) -> None:
        if has_listeners():
            emit(RowsDone(shard_id, rows))
        elif _collecting:
            with _collected_lock:
                if run not in _collected and len(_collected) >= MAX_RUNS_KEPT:
                    del _collected[next(iter(_collected))]
                shards = _collected.setdefault(run, {})
                shards[shard_id] = shards.get(shard_id, 0) + rows

    return report


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
