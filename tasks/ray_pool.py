"""Connect to Ray: the cluster in ``RAY_ADDRESS`` when set, else a local one bound to loopback.

Ray rewrites an explicit ``127.0.0.1`` (in ``ray.init(address=...)``, ``_node_ip_address``,
``ray start --address`` and ``--node-ip-address``) to the address of the interface that holds the
default route, so a "loopback" cluster advertises and dials the machine's public address
(ray-project/ray#26293, #59110). :func:`keep_loopback` keeps an explicit loopback address as
given; :func:`ensure_ray` uses it, and ``python -m augflow.tasks.ray_pool start ...`` is the
``ray`` CLI with it, for clusters of several nodes on one machine (tests, demos).

Token authentication: Ray only enables it on its own for a cluster it starts locally. A node or
driver joining with an explicit address needs ``RAY_AUTH_MODE=token`` and the cluster's token
(``RAY_AUTH_TOKEN`` or ``RAY_AUTH_TOKEN_PATH``) in its environment, like every node of the cluster.

Priority: Ray starts its workers at nice 15 unless told otherwise, so on a shared machine the
actors that do the work would run behind every other process, the idle driver's included. A
cluster augflow starts (here, or ``augflow worker``) runs them at the niceness of the process that
asked for the work (:func:`actor_niceness`); actors on other clusters try to move there themselves
(:func:`set_niceness`, which needs CAP_SYS_NICE to go below the cluster's setting).

How many actors and how many threads each: :func:`pool_layout`.
"""

from __future__ import annotations

import functools
import ipaddress
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ray
from ray._private import services

from augflow.schemas.request import AugmentRequest, ModelSpec
from augflow.tasks import ray_reaper

LOOPBACK = "127.0.0.1"
log = logging.getLogger(__name__)

#: Resident memory of an actor before its model (Python, torch, diffusers: ~560 MB measured).
ACTOR_BASE_BYTES = 700 * 2**20
#: An actor's memory per byte of weights on disk: the weights, activations, a copy while loading.
ACTOR_BYTES_PER_WEIGHT_BYTE = 3
#: Weights assumed for a model whose size cannot be read from a local folder (a hub id).
UNKNOWN_WEIGHT_BYTES = 2 * 2**30
#: PNG encode threads of a GPU actor at most (each keeps a core busy; see models/runner.py).
MAX_ENCODE_THREADS = 8


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def address_host(address: str) -> str:
    """The host of ``host:port`` (or of a bare host); empty for ``auto``/``local``/``ray://``."""
    if "://" in address or address in ("auto", "local"):
        return ""
    host, sep, port = address.rpartition(":")
    return host if sep and port.isdigit() else address


@contextmanager
def keep_loopback() -> Iterator[None]:
    """While active, Ray keeps an explicit loopback address instead of swapping in the public one.

    Ray resolves every user-given host through ``services.resolve_ip_for_localhost`` at call time,
    so replacing that one function covers the bootstrap address, the node address and the driver's
    choice of local raylet; other hosts still go through Ray's own resolution.
    """
    original = services.resolve_ip_for_localhost

    def resolve(host: str) -> str:
        if is_loopback(host):
            return LOOPBACK if host == "localhost" else host
        return original(host)

    services.resolve_ip_for_localhost = resolve
    try:
        yield
    finally:
        services.resolve_ip_for_localhost = original


def actor_niceness() -> int:
    """The niceness actors run at: this process's own. The driver mostly waits while they
    compute, so they get the priority of whoever asked for the work — not Ray's default 15, which
    on a shared machine puts them behind every background job."""
    return os.getpriority(os.PRIO_PROCESS, 0)


def local_system_config() -> dict[str, Any]:
    """Ray system settings of a cluster augflow starts itself."""
    return {"worker_niceness": actor_niceness()}


def set_niceness(target: int | None) -> int:
    """Move this process to niceness ``target`` if it is not there; returns the niceness it has.

    Raising it is always allowed; lowering it needs CAP_SYS_NICE (root in most containers), so a
    refusal is logged and the process keeps what the cluster gave it.
    """
    current = os.getpriority(os.PRIO_PROCESS, 0)
    if target is None or target == current:
        return current
    try:
        os.setpriority(os.PRIO_PROCESS, 0, target)
    except OSError as exc:
        log.info("actor stays at niceness %d (cannot move to %d: %s)", current, target, exc)
        return current
    return target


def ensure_ray() -> None:
    if ray.is_initialized():
        return
    address = os.environ.get("RAY_ADDRESS")
    init = functools.partial(
        ray.init, logging_level=logging.WARNING, log_to_driver=True, ignore_reinit_error=True
    )
    if address and not is_loopback(address_host(address)):
        # A real cluster (KubeRay head service, ray:// client): Ray's own resolution is right.
        init(address=address)
        return
    with keep_loopback():
        if address:
            # A cluster on this machine (several `ray start` nodes on 127.0.0.1): connect to the
            # raylet that advertises loopback, never to the machine's public address.
            init(address=address, _node_ip_address=LOOPBACK)
        else:
            # A local cluster listens on 127.0.0.1 only and starts no dashboard (nothing to expose).
            # Its processes die with this driver, however it ends (ray_reaper).
            ray_reaper.reap_orphans()
            init(
                _node_ip_address=LOOPBACK,
                include_dashboard=False,
                _system_config=local_system_config(),
            )
            ray_reaper.guard_local_ray()


def shutdown_quickly() -> None:
    """Leave Ray now: disconnect, and if this process started the local cluster, SIGKILL its
    processes instead of Ray's one-by-one graceful stop (SIGTERM, then up to 1 s each: 1.2 s of a
    1.7 s shutdown measured here, plus 0.5 s Ray sleeps at interpreter exit). Meant for the end of
    a run, when every shard is committed and nothing in the cluster is worth waiting for."""
    if not ray.is_initialized():
        return
    from ray._private import worker as ray_worker

    node = getattr(ray_worker, "_global_node", None)
    if node is None or not node.is_head():
        ray.shutdown()  # someone else's cluster: only disconnect
        return
    try:
        ray_worker._global_node = None  # ray.shutdown() then only disconnects this driver
        ray.shutdown()
        node.kill_all_processes(check_alive=False, allow_graceful=False)
    except Exception:  # a Ray whose internals moved: its own (slower) shutdown
        log.debug("quick Ray shutdown failed; using ray.shutdown()", exc_info=True)
        ray_worker._global_node = node
        ray.shutdown()


def cluster_gpus() -> int:
    return int(ray.cluster_resources().get("GPU", 0))


def cluster_cpus() -> int:
    return max(1, int(ray.cluster_resources().get("CPU", 1)))


@dataclass(frozen=True)
class PoolLayout:
    """How a request's shards are computed: ``actors`` actors on ``device``, each with
    ``threads`` torch threads, reserving ``num_cpus``/``num_gpus`` of Ray's resources, encoding
    PNGs on ``encode_threads`` threads (0: inline)."""

    device: str
    actors: int
    threads: int
    num_cpus: int
    num_gpus: int
    encode_threads: int

    def options(self) -> dict[str, Any]:
        opts: dict[str, Any] = {"num_cpus": self.num_cpus}
        if self.num_gpus:
            opts["num_gpus"] = self.num_gpus
        return opts


def pool_layout(request: AugmentRequest, pending: int) -> PoolLayout:
    """Actors and threads for ``pending`` shards of ``request`` on the connected cluster.

    GPU: one actor per GPU (or ``execution.workers``), one torch thread, and the CPUs the GPU's
    node has per GPU for encoding. CPU: threads per actor come from the machine alone — its cores
    over the actors its memory holds (one thread each on a machine that holds an actor per core)
    — and the pool is as many such actors as the cluster's CPUs take, or ``execution.workers``.
    The thread count never depends on the job or on ``workers``: intra-op threads can change a
    convolution's reduction order, so they are as fixed as the hardware, and a request computes
    the same bytes however many workers run it. More threads per actor only pays for models too
    big to hold once per core; for small ones, one thread per actor avoids OpenMP's spin-waits,
    which on a shared machine cost more than they win.
    """
    device = request.execution.device
    gpus = cluster_gpus() if device != "cpu" else 0
    workers = request.execution.workers
    # device=cuda asks for GPU actors even when the cluster has no GPU yet: an autoscaler (KubeRay
    # GPU group at zero) adds GPU nodes for pending GPU actors, which it never does for CPU ones.
    if gpus > 0 or device == "cuda":
        gpu_nodes = [n for n in _alive_nodes() if n.get("GPU", 0) >= 1]
        per_gpu = max((int(n.get("CPU", 1) // n["GPU"]) for n in gpu_nodes), default=2)
        return PoolLayout(
            device="cuda",
            actors=max(1, min(workers or max(1, gpus), pending)),
            threads=1,
            num_cpus=1,
            num_gpus=1,
            encode_threads=max(1, min(MAX_ENCODE_THREADS, per_gpu - 1)),
        )
    threads = cpu_threads_per_actor(request.model)
    capacity = max(1, cluster_cpus() // threads)
    return PoolLayout(
        device="cpu",
        actors=max(1, min(workers or capacity, pending)),
        threads=threads,
        num_cpus=threads,
        num_gpus=0,
        encode_threads=0,
    )


def cpu_threads_per_actor(model: ModelSpec) -> int:
    """Torch threads of a CPU actor of ``model`` on the cluster's largest node."""
    nodes = [n for n in _alive_nodes() if n.get("CPU", 0) >= 1]
    if not nodes:
        return 1
    node = max(nodes, key=lambda n: n.get("CPU", 0))
    return cpu_threads(int(node["CPU"]), float(node.get("memory", 0)), model_weight_bytes(model))


def cpu_threads(cores: int, memory: float, weight_bytes: int) -> int:
    """A node's cores over the actors of a model with ``weight_bytes`` its ``memory`` holds (an
    actor per core when it holds that many; 0 memory: unknown, assume it does)."""
    per_actor = ACTOR_BASE_BYTES + ACTOR_BYTES_PER_WEIGHT_BYTE * weight_bytes
    fit = cores if memory <= 0 else max(1, min(cores, int(memory // per_actor)))
    return max(1, cores // fit)


def model_weight_bytes(model: ModelSpec) -> int:
    """Bytes of a local model folder's safetensors weights; a fixed guess for a hub id."""
    path = Path(model.id).expanduser()
    if not path.is_dir():
        return UNKNOWN_WEIGHT_BYTES
    return sum(f.stat().st_size for f in path.rglob("*.safetensors") if f.is_file())


def _alive_nodes() -> list[dict[str, float]]:
    return [n.get("Resources", {}) for n in ray.nodes() if n.get("Alive")]


def ray_cli() -> None:
    """The ``ray`` CLI with explicit loopback addresses kept (``start --head``, ``start --address``)."""
    from ray.scripts.scripts import main

    with keep_loopback():
        main()


if __name__ == "__main__":
    ray_cli()
