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
"""

from __future__ import annotations

import functools
import ipaddress
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager

import ray
from ray._private import services

from augflow.tasks import ray_reaper

LOOPBACK = "127.0.0.1"


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
            init(_node_ip_address=LOOPBACK, include_dashboard=False)
            ray_reaper.guard_local_ray()


def cluster_gpus() -> int:
    return int(ray.cluster_resources().get("GPU", 0))


def cluster_cpus() -> int:
    return max(1, int(ray.cluster_resources().get("CPU", 1)))


def ray_cli() -> None:
    """The ``ray`` CLI with explicit loopback addresses kept (``start --head``, ``start --address``)."""
    from ray.scripts.scripts import main

    with keep_loopback():
        main()


if __name__ == "__main__":
    ray_cli()
