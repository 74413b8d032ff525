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
"""

from __future__ import annotations

import contextlib
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field

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
from augflow.tasks import progress
from augflow.tasks.commits import committed_results
from augflow.tasks.credentials import S3Settings, forwarded_settings, install_s3_settings
from augflow.tasks.layout import RunLayout
from augflow.tasks.preflight import preflight
from augflow.tasks.ray_pool import cluster_cpus, cluster_gpus, ensure_ray
from augflow.tasks.storage import Storage

# Two shards in flight per actor: the next one is queued while the current one computes.
IN_FLIGHT_PER_ACTOR = 2

#: errors a retry cannot fix: the pool stops at the first one and raises it as it is
FATAL_ERRORS: tuple[type[AugflowError], ...] = (
    ModelLoadError,
    RequestError,
    StoragePermissionError,
)


class _ShardActor:
    def __init__(
        self, request: AugmentRequest, device: str, threads: int, s3: S3Settings | None = None
    ) -> None:
        # Imported here, in the actor's process: the driver never loads torch or the model code.
        import torch

        from augflow.tasks.shard_worker import ShardWorker

        if s3 is not None:
            # The driver's S3 settings, passed as an actor argument (secret masked in any repr),
            # never through runtime_env, which Ray shows in its dashboard and logs.
            install_s3_settings(s3)
        torch.set_num_threads(threads)
        self.worker: ShardWorker | None = None
        self.init_error: AugflowError | None = None
        try:
            self.worker = ShardWorker(request, device=device)
        except AugflowError as exc:
            # Raised here it would kill the actor, and Ray's ActorDiedError keeps only a message:
            # the driver could not tell a refused model from a crash and would retry it. Kept and
            # raised from process(), it reaches the driver intact (RayTaskError.cause).
            self.init_error = exc

    # Bare @ray.method sets no option; it types `actor.process.remote(shard)` for the checker.
    @ray.method
    def process(self, shard: ShardSpec) -> ShardResult:
        if self.init_error is not None:
            raise self.init_error
        assert self.worker is not None
        result = self.worker.process(shard)
        if result.status != "computed":
            return result
        # Which node computed it, for reports and the scale-out test; the marker does not hold it.
        return result.model_copy(update={"node_id": ray.get_runtime_context().get_node_id()})

    @ray.method
    def node_id(self) -> str:
        return ray.get_runtime_context().get_node_id()


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


def execute_plan(
    request: AugmentRequest,
    plan: Plan,
    on_result: Callable[[ShardResult], None] | None = None,
) -> list[ShardResult]:
    """Compute every uncommitted shard; returns the carried results, then one per shard in plan
    order."""
    notify = on_result or (lambda _r: None)
    results = committed_results(
        Storage(request.output), RunLayout(request.request_hash), (s.shard_id for s in plan.shards)
    )
    for r in (*plan.carried, *results.values()):
        notify(r)
    pending = [s for s in plan.shards if s.shard_id not in results]
    if pending:
        # Before Ray starts: a read-only root or an unloadable model fails in seconds, here.
        preflight(request)
        results.update(_run_pool(request, pending, notify))
    return [*plan.carried, *(results[s.shard_id] for s in plan.shards)]


def _run_pool(
    request: AugmentRequest, pending: list[ShardSpec], notify: Callable[[ShardResult], None]
) -> dict[str, ShardResult]:
    ensure_ray()
    gpus = cluster_gpus() if request.execution.device != "cpu" else 0
    # device=cuda asks for GPU actors even when the cluster has no GPU yet: an autoscaler (KubeRay
    # GPU group at zero) adds GPU nodes for pending GPU actors, which it never does for CPU ones.
    wants_gpu = gpus > 0 or request.execution.device == "cuda"
    size = min(request.execution.workers or max(1, gpus), len(pending))
    if wants_gpu:
        options, device, threads = {"num_gpus": 1, "num_cpus": 1}, "cuda", 1
    else:
        threads = max(1, cluster_cpus() // size)
        options, device = {"num_cpus": threads}, "cpu"
    remote_cls = ray.remote(_ShardActor)
    s3 = forwarded_settings() if _uses_s3(request) else None

    def new_actor() -> ActorProxy[_ShardActor]:
        # max_concurrency lets an actor read/upload one shard while it computes the next; the
        # worker's lock keeps compute itself one shard at a time.
        return remote_cls.options(
            **options, max_restarts=0, max_task_retries=0, max_concurrency=IN_FLIGHT_PER_ACTOR
        ).remote(request, device, threads, s3)

    channel = progress.open_remote_channel(request.request_hash)  # per-batch progress
    slots = [_Slot(new_actor()) for _ in range(size)]
    queue: deque[ShardSpec] = deque(pending)
    inflight: dict[ray.ObjectRef[ShardResult], tuple[int, int, ShardSpec]] = {}
    # the first call on each actor, answered once its model is loaded
    probes: dict[ray.ObjectRef[str], tuple[int, int]] = {}
    attempts: Counter[str] = Counter()
    failures: dict[str, str] = {}
    results: dict[str, ShardResult] = {}
    timeout = request.execution.shard_timeout_s
    abandoned: list[ray.ObjectRef[ShardResult]] = []  # results of workers killed as hung

    def probe(i: int) -> None:
        probes[slots[i].actor.node_id.remote()] = (i, slots[i].generation)

    def replace(i: int) -> None:
        slot = slots[i]
        slot.actor, slot.generation, slot.inflight = new_actor(), slot.generation + 1, 0
        slot.ready, slot.progress = False, time.monotonic()
        probe(i)

    def fill(i: int) -> None:
        slot = slots[i]
        if slot.inflight == 0:
            slot.progress = time.monotonic()
        while queue and slot.inflight < IN_FLIGHT_PER_ACTOR:
            shard = queue.popleft()
            ref = slot.actor.process.remote(shard)
            inflight[ref] = (i, slot.generation, shard)
            slot.inflight += 1

    def retry(shard: ShardSpec, why: str) -> None:
        _retry(shard, why, attempts, failures, queue, request)

    def expire_hung() -> None:
        now = time.monotonic()
        for i, slot in enumerate(slots):
            if not (slot.ready and slot.inflight and now - slot.progress > timeout):
                continue
            mine = [r for r, (j, g, _) in inflight.items() if j == i and g == slot.generation]
            # The oldest submission is the one computing; the others only waited behind it.
            abandoned.extend(mine)
            for n, ref in enumerate(mine):
                _, _, shard = inflight.pop(ref)
                if n == 0:
                    retry(
                        shard,
                        f"timed out: no result after {timeout:g}s (execution.shard_timeout_s); "
                        "its worker was presumed hung and killed",
                    )
                else:
                    queue.appendleft(shard)
            ray.kill(slot.actor)  # type: ignore[arg-type]
            replace(i)

    try:
        for i in range(size):
            probe(i)
            fill(i)
        while inflight:
            wait_s = max(0.05, min(5.0, timeout / 4))
            ready, _ = ray.wait([*inflight, *probes], num_returns=1, timeout=wait_s)
            if not ready:
                expire_hung()
                for j in range(size):
                    fill(j)
                continue
            ref = ready[0]
            if ref in probes:
                i, generation = probes.pop(ref)
                try:
                    ray.get(ref)
                except RayError:
                    continue  # it died starting; the shards it holds report that
                if generation == slots[i].generation:
                    slots[i].ready, slots[i].progress = True, time.monotonic()
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
                    replace(i)
                what = "worker died" if isinstance(exc, RayActorError) else type(exc).__name__
                retry(shard, f"{what}: {_first_line(exc)}")
            else:
                results[shard.shard_id] = result
                notify(result)
            expire_hung()
            for j in range(size):
                fill(j)
    finally:
        channel.close()
        for slot in slots:
            # Ray types ActorClass.remote() as `ActorHandle | type`; it always returns a handle.
            ray.kill(slot.actor)  # type: ignore[arg-type]
        _drain(abandoned)
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
