"""Warm actors: loaded models that outlive a flow run, on a long-lived Ray cluster.

A flow run started by a deployment is a new process; without help it starts its actors and loads
its model again, every time. On a cluster where warm actors are enabled (:func:`enable`, which
``augflow worker`` calls on the Ray it keeps running), the shard pool instead leases actors from a
set of Ray *detached named* actors kept per warm key — model, device, threads and the compute
settings that shape the loaded pipeline (:func:`warm_key`) — and hands them back at the end, so
the next request of the same model starts computing at once.

Each warm actor leaves on its own after ``idle_timeout`` seconds without work (:class:`IdleTimer`,
which runs inside the actor, so a driver that dies holding a lease cannot pin it forever). When a
request needs resources that idle actors of another model hold, those are asked to leave first.
Decisions to leave are taken by the actor under its own lock, so a lease either arrives first
(and the actor stays) or is refused (and the driver starts a fresh actor).

Ray is the registry: actor names in :data:`NAMESPACE` are ``<warm key>-<suffix>``, and the
timeout lives in a small detached actor (:data:`CONFIG_NAME`). No environment setting is needed:
a flow run that connects to such a cluster (``RAY_ADDRESS``) finds it enabled there.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import ray

from augflow.schemas.request import AugmentRequest
from augflow.tasks.credentials import S3Settings
from augflow.tasks.ray_pool import PoolLayout

log = logging.getLogger(__name__)

NAMESPACE = "augflow-warm"
CONFIG_NAME = "augflow-warm-config"
#: A lease that saw no call for this long no longer keeps an actor from making room for another
#: model (its driver is gone or is busy with validation and registration).
STALE_LEASE_S = 30.0
#: How long a driver waits for an existing warm actor to answer (it may still be loading).
ACQUIRE_TIMEOUT_S = 300.0


class _WarmConfig:
    """The cluster's warm-actor settings, held by a detached actor so every driver can read them."""

    def __init__(self, idle_timeout_s: float) -> None:
        self.idle_timeout_s = idle_timeout_s

    def set_idle_timeout(self, seconds: float) -> None:
        self.idle_timeout_s = seconds

    def idle_timeout(self) -> float:
        return self.idle_timeout_s


def enable(idle_timeout_s: float) -> None:
    """Keep actors warm on the connected cluster, each for ``idle_timeout_s`` seconds of no work."""
    if idle_timeout_s <= 0:
        raise ValueError(f"idle timeout must be positive, got {idle_timeout_s}")
    cfg: Any = (
        ray.remote(_WarmConfig)
        .options(
            name=CONFIG_NAME,
            namespace=NAMESPACE,
            lifetime="detached",
            get_if_exists=True,
            num_cpus=0,
        )
        .remote(idle_timeout_s)
    )
    ray.get(cfg.set_idle_timeout.remote(idle_timeout_s))


def disable() -> int:
    """Stop keeping actors warm and end the warm actors there are; returns how many ended."""
    ended = 0
    for name in _warm_names():
        with contextlib.suppress(ValueError):
            ray.kill(ray.get_actor(name, namespace=NAMESPACE))
            ended += name != CONFIG_NAME
    return ended


def idle_timeout() -> float | None:
    """The warm actors' idle timeout on the connected cluster; None when warm actors are off."""
    try:
        cfg: Any = ray.get_actor(CONFIG_NAME, namespace=NAMESPACE)
    except ValueError:
        return None
    return float(ray.get(cfg.idle_timeout.remote()))


def warm_key(request: AugmentRequest, layout: PoolLayout) -> str:
    """What an actor's loaded state depends on. The micro-batch is left out (it is chosen per
    call), so requests that only batch differently share actors."""
    body = {
        "model": request.model.model_dump(mode="json"),
        "device": layout.device,
        "threads": layout.threads,
        "encode_threads": layout.encode_threads,
        "compute": request.compute.model_dump(mode="json", exclude={"micro_batch"}),
    }
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()[:20]


def warm_actors(prefix: str = "") -> list[str]:
    """Names of the warm actors on the cluster (whose key starts with ``prefix``)."""
    return [n for n in _warm_names() if n != CONFIG_NAME and n.startswith(prefix)]


def lease(
    request: AugmentRequest,
    layout: PoolLayout,
    s3: S3Settings | None,
    create: Callable[[str], Any],
    count: int | None = None,
    exclude: Sequence[Any] = (),
) -> list[Any]:
    """``count`` (default ``layout.actors``) leased actors for ``request``: warm ones of its key
    first, then new ones made by ``create(name)``; handles in ``exclude`` are not leased again."""
    want = layout.actors if count is None else count
    key = warm_key(request, layout)
    skip = {_actor_id(h) for h in exclude}
    candidates: list[Any] = []
    for name in warm_actors(f"{key}-"):
        with contextlib.suppress(ValueError):
            handle = ray.get_actor(name, namespace=NAMESPACE)
            if _actor_id(handle) not in skip:
                candidates.append(handle)
    leased: list[Any] = []
    refs: dict[Any, Any] = {h.acquire.remote(s3): h for h in candidates}
    if refs:
        ready, _ = ray.wait(list(refs), num_returns=len(refs), timeout=ACQUIRE_TIMEOUT_S)
        for ref in ready:
            try:
                ok = ray.get(ref)
            except Exception:  # dead or dying: not leased
                continue
            if ok:
                leased.append(refs[ref])
    for extra in leased[want:]:
        extra.release.remote()
    leased = leased[:want]
    missing = want - len(leased)
    if missing > 0:
        _make_room(key, layout, missing)
        for _ in range(missing):
            handle = create(f"{key}-{uuid.uuid4().hex[:8]}")
            handle.acquire.remote(None)  # queued behind its start-up; a fresh actor always says yes
            leased.append(handle)
    log.info("warm pool %s: %d leased, %d started", key, want - max(missing, 0), max(missing, 0))
    return leased


def _make_room(key: str, layout: PoolLayout, actors: int) -> None:
    """Ask idle warm actors of other keys to leave until ``actors`` of ``layout`` fit."""
    need = {"CPU": layout.num_cpus * actors, "GPU": layout.num_gpus * actors}
    free = ray.available_resources()
    short = {r: n - free.get(r, 0.0) for r, n in need.items() if n > free.get(r, 0.0) + 1e-9}
    if not short:
        return
    for name in warm_actors():
        if name.startswith(f"{key}-"):
            continue
        with contextlib.suppress(Exception):
            handle: Any = ray.get_actor(name, namespace=NAMESPACE)
            held = ray.get(handle.stats.remote(), timeout=10).get("resources", {})
            if ray.get(handle.retire_if_idle.remote(), timeout=10):
                for r in short:
                    short[r] -= float(held.get(r, 0.0))
                if all(v <= 1e-9 for v in short.values()):
                    return


def _warm_names() -> list[str]:
    return [
        a["name"]
        for a in ray.util.list_named_actors(all_namespaces=True)
        if a.get("namespace") == NAMESPACE
    ]


def _actor_id(handle: Any) -> str:
    return handle._actor_id.hex()  # the stable identity of a handle (Ray has no public one)


class IdleTimer:
    """Runs inside a warm actor: counts leases and calls, and ends the actor after ``idle_s``
    seconds with no call in flight and no call, lease or release seen."""

    def __init__(self, idle_s: float, poll_s: float | None = None) -> None:
        self.idle_s = idle_s
        self._lock = threading.Lock()
        self._leases = 0
        self._active = 0
        self._last = time.monotonic()
        self._leaving = False
        self._poll = poll_s if poll_s is not None else max(0.2, min(5.0, idle_s / 4))
        threading.Thread(target=self._watch, name="augflow-idle", daemon=True).start()

    def acquire(self) -> bool:
        with self._lock:
            if self._leaving:
                return False
            self._leases += 1
            self._last = time.monotonic()
            return True

    def release(self) -> None:
        with self._lock:
            self._leases = max(0, self._leases - 1)
            self._last = time.monotonic()

    @contextlib.contextmanager
    def busy(self) -> Iterator[None]:
        with self._lock:
            self._active += 1
            self._last = time.monotonic()
        try:
            yield
        finally:
            with self._lock:
                self._active -= 1
                self._last = time.monotonic()

    def retire_if_unused(self) -> bool:
        """Leave now unless a call is running or a live lease holds this actor."""
        with self._lock:
            quiet = time.monotonic() - self._last
            if self._active or (self._leases and quiet < STALE_LEASE_S) or self._leaving:
                return False
            self._leaving = True
        threading.Timer(0.2, _leave).start()  # after the reply is on its way
        return True

    def _watch(self) -> None:
        while True:
            time.sleep(self._poll)
            with self._lock:
                if self._leaving:  # retired to make room: already on its way out
                    return
                if self._active or time.monotonic() - self._last < self.idle_s:
                    continue
                self._leaving = True
            _leave()
            return


def _leave() -> None:
    """End this actor (its detached name is freed with it)."""
    ray.kill(ray.get_runtime_context().current_actor)
