"""Fan a plan's shards out to a pool of Ray actors, each holding one loaded model.

One Prefect task wraps the whole fan-out (Prefect task runs stay bounded however many shards
there are); Ray does the per-shard parallelism. Committed shards are skipped; a shard whose actor
dies or raises is retried on a fresh actor up to ``execution.max_retries`` times.
"""

from __future__ import annotations

from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field

import ray
from ray.actor import ActorProxy
from ray.exceptions import RayActorError, RayTaskError

from augflow.schemas.errors import AugflowError, ExecutionError
from augflow.schemas.records import Plan, ShardResult, ShardSpec
from augflow.schemas.request import AugmentRequest
from augflow.tasks import progress
from augflow.tasks.commits import committed_results
from augflow.tasks.credentials import S3Settings, forwarded_settings, install_s3_settings
from augflow.tasks.layout import RunLayout
from augflow.tasks.ray_pool import cluster_cpus, cluster_gpus, ensure_ray
from augflow.tasks.storage import Storage

# Two shards in flight per actor: the next one is queued while the current one computes.
IN_FLIGHT_PER_ACTOR = 2


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
        self.worker = ShardWorker(request, device=device)

    # Bare @ray.method sets no option; it types `actor.process.remote(shard)` for the checker.
    @ray.method
    def process(self, shard: ShardSpec) -> ShardResult:
        result = self.worker.process(shard)
        if result.status != "computed":
            return result
        # Which node computed it, for reports and the scale-out test; the marker does not hold it.
        return result.model_copy(update={"node_id": ray.get_runtime_context().get_node_id()})

    def node_id(self) -> str:
        return ray.get_runtime_context().get_node_id()


@dataclass
class _Slot:
    actor: ActorProxy[_ShardActor]
    generation: int = 0
    inflight: int = 0
    nodes: set[str] = field(default_factory=set)


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
    attempts: Counter[str] = Counter()
    failures: dict[str, str] = {}
    results: dict[str, ShardResult] = {}

    def fill(i: int) -> None:
        slot = slots[i]
        while queue and slot.inflight < IN_FLIGHT_PER_ACTOR:
            shard = queue.popleft()
            ref = slot.actor.process.remote(shard)
            inflight[ref] = (i, slot.generation, shard)
            slot.inflight += 1

    try:
        for i in range(size):
            fill(i)
        while inflight:
            ready, _ = ray.wait(list(inflight), num_returns=1)
            ref = ready[0]
            i, generation, shard = inflight.pop(ref)
            slot = slots[i]
            slot.inflight -= 1 if generation == slot.generation else 0
            try:
                result = ray.get(ref)
            except RayActorError as exc:
                _fatal_init_error(exc)
                if generation == slot.generation:  # replace a dead actor once, not per task
                    slot.actor, slot.generation, slot.inflight = new_actor(), generation + 1, 0
                _retry(shard, f"worker died: {exc}", attempts, failures, queue, request)
            except RayTaskError as exc:
                cause = exc.cause if exc.cause is not None else exc
                _retry(
                    shard, f"{type(cause).__name__}: {cause}", attempts, failures, queue, request
                )
            else:
                results[shard.shard_id] = result
                notify(result)
            for j in range(size):
                fill(j)
    finally:
        channel.close()
        for slot in slots:
            # Ray types ActorClass.remote() as `ActorHandle | type`; it always returns a handle.
            ray.kill(slot.actor)  # type: ignore[arg-type]
    if failures:
        lines = "\n".join(f"  - shard {sid}: {why}" for sid, why in sorted(failures.items()))
        raise ExecutionError(
            f"{len(failures)} of {len(pending)} shards failed after "
            f"{request.execution.max_retries} retries; committed shards are kept and a re-run "
            f"resumes from them:\n{lines}"
        )
    return results


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


def _fatal_init_error(exc: RayActorError) -> None:
    """An actor that failed in __init__ (bad model) fails the same way on every retry: stop now."""
    cause = getattr(exc, "cause", None)
    inner = getattr(cause, "cause", cause)
    if isinstance(inner, AugflowError):
        raise inner from None
