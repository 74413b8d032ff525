"""Fan a plan's shards out to a pool of Ray actors, each holding one loaded model.

One Prefect task wraps the whole fan-out (Prefect task runs stay bounded however many shards
there are); Ray does the per-shard parallelism. Committed shards whose files check out against
their markers are skipped (damaged ones are recomputed, :mod:`augflow.tasks.commits`).

Failures: a shard whose actor dies (crash, OOM kill) or raises is retried on a fresh actor up to
``execution.max_retries`` times. A worker that produces no result for ``execution.shard_timeout_s``
while it has work is presumed hung: it is killed, the shard it was computing is charged one
attempt and retried, and the shards queued behind it go back to the queue uncharged. Errors that
cannot succeed on retry — a model that cannot be loaded, an invalid request, a store that refuses
access — stop the run at once with that error (:data:`FATAL_ERRORS`). Before any of this starts
Ray, :func:`augflow.tasks.preflight.preflight` checks the output root, inputs and model.

Start-up does not wait for the flow. :func:`start_early` — called by ``augflow run`` before
Prefect is even imported, and by the flow before it plans — plans the request (the plan is
deterministic), starts Ray and the actors and hands them their first shards; :func:`execute_plan`
then attaches to that pool (its actors, the shards in flight, the results already in) instead of
starting one. Shards commit idempotently, so starting them early changes nothing but the wait.

On a cluster with warm actors enabled (:mod:`augflow.tasks.warm_pool`, ``augflow worker``), the
pool leases long-lived actors that already hold the model and hands them back at the end.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections import Counter, OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, cast

import ray
from ray.actor import ActorProxy
from ray.exceptions import RayActorError, RayError, RayTaskError

from augflow.schemas.errors import (
    AugflowError,
    ExecutionError,
    ModelLoadError,
    RequestError,
    StoragePermissionError,
)
from augflow.schemas.records import Plan, ShardResult, ShardSpec
from augflow.schemas.request import AugmentRequest
from augflow.schemas.settings import settings
from augflow.tasks import progress, warm_pool
from augflow.tasks.commits import committed_results
from augflow.tasks.credentials import S3Settings, forwarded_settings, install_s3_settings
from augflow.tasks.layout import RunLayout
from augflow.tasks.preflight import preflight
from augflow.tasks.ray_pool import (
    PoolLayout,
    actor_niceness,
    ensure_ray,
    pool_layout,
    set_niceness,
)
from augflow.tasks.storage import Storage

log = logging.getLogger(__name__)

# Two shards in flight per actor: the next one is queued while the current one computes.
IN_FLIGHT_PER_ACTOR = 2
#: Requests a warm actor keeps a ShardWorker for (each holds no weights of its own).
WARM_WORKERS_KEPT = 8

#: errors a retry cannot fix: the pool stops at the first one and raises it as it is
FATAL_ERRORS: tuple[type[AugflowError], ...] = (
    ModelLoadError,
    RequestError,
    StoragePermissionError,
)


class _ShardActor:
    def __init__(
        self,
        request: AugmentRequest,
        device: str,
        threads: int,
        s3: S3Settings | None = None,
        niceness: int | None = None,
        encode_threads: int = 0,
        idle_timeout_s: float | None = None,
    ) -> None:
        # Imported here, in the actor's process: the driver never loads torch or the model code.
        import torch

        from augflow.tasks.shard_worker import ShardWorker

        started = time.time()
        progress.collect_here()  # the run's channel takes this process's micro-batch counts
        if s3 is not None:
            # The driver's S3 settings, passed as an actor argument (secret masked in any repr),
            # never through runtime_env, which Ray shows in its dashboard and logs.
            install_s3_settings(s3)
        self.niceness = set_niceness(niceness)
        torch.set_num_threads(threads)
        self.device, self.encode_threads = device, encode_threads
        self.worker: ShardWorker | None = None
        self.init_error: AugflowError | None = None
        try:
            self.worker = ShardWorker(request, device=device, encode_threads=encode_threads)
        except AugflowError as exc:
            # Raised here it would kill the actor, and Ray's ActorDiedError keeps only a message:
            # the driver could not tell a refused model from a crash and would retry it. Kept and
            # raised from process(), it reaches the driver intact (RayTaskError.cause).
            self.init_error = exc
        # Warm actors serve later requests of the same model with this one's loaded pipeline.
        self._workers: OrderedDict[tuple[str, str], Any] = OrderedDict()
        self._workers_lock = threading.Lock()
        if self.worker is not None:
            self._workers[(request.request_hash, request.output)] = self.worker
        self._stats: dict[str, Any] = {
            "pid": _pid(),
            "started_at": started,
            "ready_at": time.time(),
            "model_loads": 1,
            "requests": 1,
            "shards": 0,
            "first_output_at": None,
        }
        self._idle = warm_pool.IdleTimer(idle_timeout_s) if idle_timeout_s else None
        #: when this actor began each request's first shard (request hash -> time.time())
        self._started: dict[str, float] = {}

    # Bare @ray.method sets no option; it types `actor.process.remote(shard)` for the checker.
    @ray.method
    def process(self, shard: ShardSpec, request: AugmentRequest | None = None) -> ShardResult:
        with self._busy():
            if self.init_error is not None:
                raise self.init_error
            worker = self.worker if request is None else self._worker_for(request)
            assert worker is not None  # set whenever init_error is not
            self._started.setdefault(worker.request.request_hash, time.time())
            result = worker.process(shard)
            self._stats["shards"] += 1
            if result.status == "computed" and self._stats["first_output_at"] is None:
                self._stats["first_output_at"] = time.time()
        if result.status != "computed":
            return result
        # Which node computed it, for reports and the scale-out test; the marker does not hold it.
        return result.model_copy(update={"node_id": ray.get_runtime_context().get_node_id()})

    # The readiness probe. In the control group: a threaded actor does not keep submission order,
    # so in the default group the probe could wait behind a hung shard and its queued successor
    # (both threads taken); unanswered, the actor would never count as ready and never time out.
    @ray.method(concurrency_group="control")
    def node_id(self) -> str:
        return ray.get_runtime_context().get_node_id()

    # --- warm actors: leases from drivers, handed back, idle exit ---------------------------
    @ray.method(concurrency_group="control")
    def acquire(self, s3: S3Settings | None = None) -> bool:
        """Lease this actor to a driver; False when it is already on its way out, or holds no
        model (its load failed: a lease would only hand the next driver that error)."""
        if self.init_error is not None or self._idle is None or not self._idle.acquire():
            return False
        if s3 is not None:
            install_s3_settings(s3)
        return True

    @ray.method(concurrency_group="control")
    def release(self) -> None:
        if self._idle is not None:
            self._idle.release()

    @ray.method(concurrency_group="control")
    def retire_if_idle(self) -> bool:
        """Leave now if no driver holds this actor (to free its resources for another model)."""
        return self._idle is not None and self._idle.retire_if_unused()

    @ray.method(concurrency_group="control")
    def take_progress(self, run: str) -> list[tuple[str, int]]:
        """Rows of ``run``'s micro-batches computed here since the driver last asked."""
        return progress.take_collected(run)

    @ray.method(concurrency_group="control")
    def stats(self) -> dict[str, Any]:
        """When it started and was ready, how often it loaded a model, what it computed."""
        context = ray.get_runtime_context()
        first = {k[0]: w.model.first_batch_done_at for k, w in self._workers.items()}
        return dict(
            self._stats,
            first_batch_at=min((t for t in first.values() if t is not None), default=None),
            first_batch_by_request=first,
            first_shard_started_by_request=dict(self._started),
            node_id=context.get_node_id(),
            resources=context.get_assigned_resources(),
            niceness=self.niceness,
        )

    def _busy(self) -> Any:
        return self._idle.busy() if self._idle is not None else _nullcontext()

    def _worker_for(self, request: AugmentRequest) -> Any:
        from augflow.tasks.shard_worker import ShardWorker

        key = (request.request_hash, request.output)
        # one lookup-or-build at a time: both compute threads may bring a new request's shards
        with self._workers_lock:
            worker = self._workers.get(key)
            if worker is not None:
                self._workers.move_to_end(key)
                return worker
            assert self.worker is not None  # process() raised init_error otherwise
            # Same model, device and compute settings (the warm key): reuse the loaded pipeline,
            # and its lock, so two requests never compute on it at once. Built under the lock:
            # setting up a request touches the shared pipeline (its compiled UNet).
            lock = self.worker.compute_lock
            with lock:
                worker = ShardWorker(
                    request,
                    device=self.device,
                    loaded=self.worker.model.loaded,
                    encode_threads=self.encode_threads,
                    compute_lock=lock,
                )
            self._workers[key] = worker
            self._stats["requests"] += 1
            while len(self._workers) > WARM_WORKERS_KEPT:
                self._workers.popitem(last=False)
            return worker


class _nullcontext:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


def _pid() -> int:
    import os

    return os.getpid()


@dataclass
class _Slot:
    actor: ActorProxy[_ShardActor]
    generation: int = 0
    inflight: int = 0
    nodes: set[str] = field(default_factory=set)
    # Hang detection: `ready` once the actor answered its first call (the model is loaded, so
    # loading time never counts as a hang); `progress` is when it last returned a result or
    # became busy; a ready actor with work and no result for shard_timeout_s is presumed hung.
    ready: bool = False
    progress: float = field(default_factory=time.monotonic)


@dataclass
class _Pool:
    """Actors computing one request's shards: queued shards, shards in flight, readiness probes,
    how to replace an actor, the run's progress channel. Warm pools hand their actors back
    instead of killing them."""

    request: AugmentRequest
    layout: PoolLayout
    new_actor: Callable[[], ActorProxy[_ShardActor]]
    slots: list[_Slot]
    channel: progress.RemoteChannel
    queue: deque[ShardSpec] = field(default_factory=deque)
    inflight: dict[ray.ObjectRef[ShardResult], tuple[int, int, ShardSpec]] = field(
        default_factory=dict
    )
    #: the first call on each actor, answered once its model is loaded: ref -> (slot, generation)
    probes: dict[ray.ObjectRef[str], tuple[int, int]] = field(default_factory=dict)
    #: results of workers killed as hung (their errors are fetched at close)
    abandoned: list[ray.ObjectRef[ShardResult]] = field(default_factory=list)
    #: the shards the attached plan wants; None: all (an early plan the flow did not attach yet)
    wanted: set[str] | None = None
    warm: bool = False
    started_at: float = field(default_factory=time.time)

    @classmethod
    def start(
        cls, request: AugmentRequest, pending: list[ShardSpec], *, listeners_later: bool = False
    ) -> _Pool:
        """Start (or lease) the actors for ``pending`` and open the run's progress channel: when
        this process has listeners, or ``listeners_later`` says they attach after the pool
        started (``augflow run`` starts it before its display exists)."""
        layout = pool_layout(request, len(pending))
        s3 = forwarded_settings() if _uses_s3(request) else None
        # The control group answers leases and stats while both compute threads are busy.
        # (Ray's stubs lack concurrency_groups on ray.remote, hence the cast.)
        remote_cls = cast(Any, ray.remote)(concurrency_groups={"control": 1})(_ShardActor)
        args = (request, layout.device, layout.threads, s3, actor_niceness(), layout.encode_threads)
        idle = warm_pool.idle_timeout()
        closed = progress.RemoteChannel(request.request_hash, None)  # until the pool exists
        if idle is not None:

            def create(name: str) -> ActorProxy[_ShardActor]:
                # detached: the actor outlives this flow run; it leaves after `idle` seconds
                return _actor_options(
                    remote_cls,
                    layout,
                    name=name,
                    namespace=warm_pool.NAMESPACE,
                    lifetime="detached",
                ).remote(*args, idle)

            def new_warm() -> ActorProxy[_ShardActor]:
                taken = [s.actor for s in pool.slots]
                return warm_pool.lease(request, layout, s3, create, count=1, exclude=taken)[0]

            handles = warm_pool.lease(request, layout, s3, create)
            pool = cls(request, layout, new_warm, [_Slot(h) for h in handles], closed, warm=True)
        else:

            def new_actor() -> ActorProxy[_ShardActor]:
                return _actor_options(remote_cls, layout, max_restarts=0).remote(*args)

            slots = [_Slot(new_actor()) for _ in range(layout.actors)]
            pool = cls(request, layout, new_actor, slots, closed)
        # the slots' ready actors as they are at each poll: a replacement is asked once it loaded
        pool.channel = progress.open_remote_channel(
            request.request_hash,
            lambda: [s.actor for s in pool.slots if s.ready],
            always=listeners_later,
        )
        for i in range(len(pool.slots)):
            pool.probe(i)
        pool.queue.extend(pending)
        return pool

    def probe(self, i: int) -> None:
        slot = self.slots[i]
        self.probes[slot.actor.node_id.remote()] = (i, slot.generation)

    def probed(self, ref: ray.ObjectRef[str]) -> None:
        """A probe answered: its actor is ready (its model loaded), unless it died starting."""
        i, generation = self.probes.pop(ref)
        try:
            ray.get(ref)
        except RayError:
            return  # it died starting; the shards it holds report that
        slot = self.slots[i]
        if generation == slot.generation:
            slot.ready, slot.progress = True, time.monotonic()

    def replace(self, i: int) -> None:
        """A fresh actor in slot ``i`` (the old one died or was killed)."""
        slot = self.slots[i]
        slot.actor, slot.generation, slot.inflight = self.new_actor(), slot.generation + 1, 0
        slot.ready, slot.progress = False, time.monotonic()
        self.probe(i)

    def submit(self, i: int, shard: ShardSpec) -> None:
        slot = self.slots[i]
        if slot.inflight == 0:
            slot.progress = time.monotonic()  # it becomes busy now: the hang timer starts here
        # A warm actor serves several requests, so it gets the request with every shard.
        actor: Any = slot.actor  # Ray's stubs type methods with defaults as taking no arguments
        ref = actor.process.remote(shard, self.request if self.warm else None)
        self.inflight[ref] = (i, slot.generation, shard)
        slot.inflight += 1

    def fill(self, i: int) -> None:
        slot = self.slots[i]
        while self.queue and slot.inflight < IN_FLIGHT_PER_ACTOR:
            self.submit(i, self.queue.popleft())

    def fill_all(self) -> None:
        """Queue shards on every actor, one round at a time: with as many shards as actors,
        each actor gets one (not the first actor two)."""
        for _ in range(IN_FLIGHT_PER_ACTOR):
            for i, slot in enumerate(self.slots):
                if self.queue and slot.inflight < IN_FLIGHT_PER_ACTOR:
                    self.submit(i, self.queue.popleft())

    def expire_hung(self, retry: Callable[[ShardSpec, str], None]) -> None:
        """Kill and replace every ready actor that had work and produced no result for
        ``execution.shard_timeout_s``: the shard it was computing is charged an attempt
        (``retry``), the ones queued behind it go back to the queue uncharged."""
        timeout = self.request.execution.shard_timeout_s
        now = time.monotonic()
        for i, slot in enumerate(self.slots):
            if not (slot.ready and slot.inflight and now - slot.progress > timeout):
                continue
            mine = [r for r, (j, g, _) in self.inflight.items() if j == i and g == slot.generation]
            # The oldest submission is the one computing; the others only waited behind it.
            self.abandoned.extend(mine)
            for n, ref in enumerate(mine):
                _, _, shard = self.inflight.pop(ref)
                if n == 0:
                    retry(
                        shard,
                        f"timed out: no result after {timeout:g}s (execution.shard_timeout_s); "
                        "its worker was presumed hung and killed",
                    )
                elif self.wanted is None or shard.shard_id in self.wanted:
                    self.queue.appendleft(shard)
            ray.kill(slot.actor)  # type: ignore[arg-type]
            self.replace(i)

    def shard_ids(self) -> set[str]:
        return {s.shard_id for s in self.queue} | {s.shard_id for _, _, s in self.inflight.values()}

    def close(self) -> None:
        global last_pool_stats
        last_pool_stats = self._stats()
        self.channel.close()
        for slot in self.slots:
            if self.warm:
                slot.actor.release.remote()  # handed back; it leaves after its idle timeout
            else:
                # Ray types ActorClass.remote() as `ActorHandle | type`; it always returns a handle.
                ray.kill(slot.actor)  # type: ignore[arg-type]
        _drain(self.abandoned)

    def _stats(self) -> dict[str, Any]:
        """Each actor's start-up and first output (for benchmarks and logs; a second at most)."""
        refs = [slot.actor.stats.remote() for slot in self.slots]
        ready, _ = ray.wait(refs, num_returns=len(refs), timeout=1.0)
        stats: list[dict[str, Any]] = []
        for ref in ready:
            try:
                stats.append(ray.get(ref))
            except Exception:  # a dead actor has no stats; that is not worth failing a run for
                continue
        return {"pool_started_at": self.started_at, "warm": self.warm, "actors": stats}


#: Start-up and first-output times of the last pool this process closed (see ``_Pool._stats``).
last_pool_stats: dict[str, Any] | None = None


def _actor_options(remote_cls: Any, layout: PoolLayout, **extra: Any) -> Any:
    # max_concurrency lets an actor read/upload one shard while it computes the next; the
    # worker's lock keeps compute itself one shard at a time.
    return remote_cls.options(
        **layout.options(), max_task_retries=0, max_concurrency=IN_FLIGHT_PER_ACTOR, **extra
    )


# --- early start -------------------------------------------------------------------------


class _EarlyStart:
    def __init__(
        self, request: AugmentRequest, plan: Plan | None, checked: bool, listeners_later: bool
    ) -> None:
        self.request, self.plan, self.checked = request, plan, checked
        self.listeners_later = listeners_later
        self.ready = threading.Event()
        self.pool: _Pool | None = None

    def run(self) -> None:
        from augflow.tasks.plan import plan_request

        try:
            plan = self.plan or plan_request(self.request)
            done = committed_results(
                Storage(self.request.output),
                RunLayout(self.request.request_hash),
                (s.shard_id for s in plan.shards),
            )
            pending = [s for s in plan.shards if s.shard_id not in done]
            if pending:  # nothing to compute (e.g. already registered): Ray is not even started
                if not self.checked:
                    preflight(self.request)  # before Ray, as execute_plan does
                ensure_ray()
                pool = _Pool.start(self.request, pending, listeners_later=self.listeners_later)
                pool.fill_all()
                self.pool = pool
        except Exception:
            # The flow starts its own pool then, and reports whatever fails there.
            log.debug("early start of %s failed", self.request.dataset, exc_info=True)
        finally:
            self.ready.set()


_early: dict[tuple[str, str], _EarlyStart] = {}
_early_lock = threading.Lock()


def start_early(
    request: AugmentRequest,
    plan: Plan | None = None,
    background: bool = False,
    *,
    checked: bool = False,
    listeners_later: bool = False,
) -> None:
    """Start Ray, the actors and the first shards of ``request`` now; :func:`execute_plan` of the
    same request attaches to them. Plans the request unless ``plan`` is given, and runs the
    preflight checks unless ``checked`` says the caller did. Idempotent until ``execute_plan``
    attaches; ``background`` runs the start in a thread. ``listeners_later``: progress listeners
    of this process attach only after this returns (``augflow run``'s display), so the run's
    progress channel opens now even though nobody listens yet; otherwise it opens only if
    someone already does (a flow run by a worker has no listener, and no channel to pay for).

    Skipped when S3 settings come from a Prefect block: reading one needs the Prefect API, which
    is not up yet when ``augflow run`` calls this.
    """
    key = (request.request_hash, request.output)
    if _uses_s3(request) and settings().s3_credentials_block:
        return
    with _early_lock:
        if key in _early:
            return
        early = _early[key] = _EarlyStart(request, plan, checked, listeners_later)
    if background:
        threading.Thread(target=early.run, name="augflow-early-start", daemon=True).start()
    else:
        early.run()


def cancel_early(request: AugmentRequest) -> None:
    """End an early start that :func:`execute_plan` did not attach to (its actors stop)."""
    pool = _take_early(request)
    if pool is not None:
        pool.close()


def _take_early(request: AugmentRequest) -> _Pool | None:
    with _early_lock:
        early = _early.pop((request.request_hash, request.output), None)
    if early is None:
        return None
    early.ready.wait()
    return early.pool


# --- the fan-out ---------------------------------------------------------------------------


def execute_plan(
    request: AugmentRequest,
    plan: Plan,
    on_result: Callable[[ShardResult], None] | None = None,
) -> list[ShardResult]:
    """Compute every uncommitted shard; returns the carried results, then one per shard in plan
    order."""
    notify = on_result or (lambda _r: None)
    early = _take_early(request)
    # Shards an early pool is computing report "computed" when they come back, not "skipped"
    # because their marker appeared meanwhile.
    mine = early.shard_ids() if early is not None else set()
    results = committed_results(
        Storage(request.output),
        RunLayout(request.request_hash),
        (s.shard_id for s in plan.shards if s.shard_id not in mine),
    )
    for r in (*plan.carried, *results.values()):
        notify(r)
    pending = [s for s in plan.shards if s.shard_id not in results]
    if pending:
        if early is None:
            # Before Ray starts: a read-only root or an unloadable model fails in seconds, here.
            # (An early pool ran the same checks before it started Ray.)
            preflight(request)
        results.update(_run_pool(request, pending, notify, early))
    elif early is not None:
        early.close()
    return [*plan.carried, *(results[s.shard_id] for s in plan.shards)]


def _run_pool(
    request: AugmentRequest,
    pending: list[ShardSpec],
    notify: Callable[[ShardResult], None],
    early: _Pool | None = None,
) -> dict[str, ShardResult]:
    wanted = {s.shard_id for s in pending}
    if early is not None:
        pool = early
        # The early plan and this one agree unless the inputs changed in between: drop queued
        # shards this plan does not have, queue the ones the early pool does not know.
        known = pool.shard_ids()
        pool.queue = deque(s for s in pool.queue if s.shard_id in wanted)
        pool.queue.extend(s for s in pending if s.shard_id not in known)
    else:
        ensure_ray()
        pool = _Pool.start(request, pending)
    pool.wanted = wanted
    slots, inflight, probes = pool.slots, pool.inflight, pool.probes
    size = len(slots)
    attempts: Counter[str] = Counter()
    failures: dict[str, str] = {}
    results: dict[str, ShardResult] = {}
    timeout = request.execution.shard_timeout_s

    def retry(shard: ShardSpec, why: str) -> None:
        if shard.shard_id in wanted:  # not a shard only an outdated early plan had
            _retry(shard, why, attempts, failures, pool.queue, request)

    try:
        pool.fill_all()
        while inflight:
            wait_s = max(0.05, min(5.0, timeout / 4))
            ready, _ = ray.wait([*inflight, *probes], num_returns=1, timeout=wait_s)
            if not ready:
                pool.expire_hung(retry)
                for j in range(size):
                    pool.fill(j)
                continue
            ref = ready[0]
            if ref in probes:
                pool.probed(ref)
                continue
            i, generation, shard = inflight.pop(ref)
            slot = slots[i]
            current = generation == slot.generation
            if current:
                slot.inflight -= 1
                slot.progress = time.monotonic()
            try:
                result = ray.get(ref)
            except RayTaskError as exc:
                cause = exc.cause if exc.cause is not None else exc
                if isinstance(cause, FATAL_ERRORS):
                    raise cause from None
                retry(shard, f"{type(cause).__name__}: {cause}")
            except RayError as exc:
                # The actor died: a crash, an OOM kill (by the OS or Ray's memory monitor), a lost
                # node. Replace it once (not once per shard it held) and retry the shard.
                if current:
                    pool.replace(i)
                what = "worker died" if isinstance(exc, RayActorError) else type(exc).__name__
                retry(shard, f"{what}: {_first_line(exc)}")
            else:
                if shard.shard_id in wanted:  # not a shard an outdated early plan started
                    results[shard.shard_id] = result
                    notify(result)
            pool.expire_hung(retry)
            for j in range(size):
                pool.fill(j)
    finally:
        pool.close()
    if failures:
        lines = "\n".join(f"  - shard {sid}: {why}" for sid, why in sorted(failures.items()))
        raise ExecutionError(
            f"{len(failures)} of {len(pending)} shards failed after "
            f"{request.execution.max_retries} retries; committed shards are kept and a re-run "
            f"resumes from them:\n{lines}"
        )
    return results


def _drain(refs: list[ray.ObjectRef[ShardResult]]) -> None:
    """Fetch the errors of killed workers' results, so Ray does not log them as unhandled."""
    done, _ = ray.wait(refs, num_returns=len(refs), timeout=2) if refs else ([], [])
    for ref in done:
        with contextlib.suppress(RayError):
            ray.get(ref)


def _first_line(exc: BaseException) -> str:
    lines = [line for line in str(exc).splitlines() if line.strip()]
    return (lines[0] if lines else type(exc).__name__)[:500]


def _uses_s3(request: AugmentRequest) -> bool:
    return any((u or "").startswith(("s3://", "s3a://")) for u in (request.output, request.inputs))


def _retry(
    shard: ShardSpec,
    why: str,
    attempts: Counter[str],
    failures: dict[str, str],
    queue: deque[ShardSpec],
    request: AugmentRequest,
) -> None:
    attempts[shard.shard_id] += 1
    if attempts[shard.shard_id] > request.execution.max_retries:
        failures[shard.shard_id] = why
    else:
        queue.append(shard)
