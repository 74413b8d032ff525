"""Connect to Ray: the cluster in ``RAY_ADDRESS`` when set, else a local one bound to loopback."""

from __future__ import annotations

import logging
import os

import ray


def ensure_ray() -> None:
    if ray.is_initialized():
        return
    address = os.environ.get("RAY_ADDRESS")
    common = {"logging_level": logging.WARNING, "log_to_driver": True, "ignore_reinit_error": True}
    if address:
        ray.init(address=address, **common)
    else:
        # A local cluster listens on 127.0.0.1 only and starts no dashboard (nothing to expose).
        ray.init(_node_ip_address="127.0.0.1", include_dashboard=False, **common)


def cluster_gpus() -> int:
    return int(ray.cluster_resources().get("GPU", 0))


def cluster_cpus() -> int:
    return max(1, int(ray.cluster_resources().get("CPU", 1)))
