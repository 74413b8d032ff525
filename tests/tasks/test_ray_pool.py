"""Connecting to Ray on loopback: address parsing, the loopback-keeping patch, the local cluster.

The two-node cluster through RAY_ADDRESS is tests/tasks/test_ray_cluster.py."""

from __future__ import annotations

import pytest
from ray._private import services

from augflow.tasks.ray_pool import LOOPBACK, address_host, is_loopback, keep_loopback


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        ("127.0.0.1", True),
        ("127.0.0.53", True),
        ("localhost", True),
        ("::1", True),
        ("[::1]", True),
        ("10.0.0.1", False),
        ("ray-head.default.svc", False),
        ("", False),
    ],
)
def test_is_loopback(host: str, expected: bool) -> None:
    assert is_loopback(host) is expected


@pytest.mark.parametrize(
    ("address", "host"),
    [
        ("127.0.0.1:6379", "127.0.0.1"),
        ("ray-head:6379", "ray-head"),
        ("[::1]:6379", "[::1]"),
        ("10.1.2.3", "10.1.2.3"),
        ("auto", ""),
        ("local", ""),
        ("ray://head:10001", ""),
    ],
)
def test_address_host(address: str, host: str) -> None:
    assert address_host(address) == host


def test_keep_loopback_keeps_loopback_hosts_only_while_active() -> None:
    original = services.resolve_ip_for_localhost
    with keep_loopback():
        resolve = services.resolve_ip_for_localhost
        assert resolve is not original
        assert resolve("127.0.0.1") == "127.0.0.1"
        assert resolve("localhost") == LOOPBACK
        assert resolve("10.9.8.7") == original("10.9.8.7")  # others: Ray's own resolution
    assert services.resolve_ip_for_localhost is original


def test_keep_loopback_restores_after_an_error() -> None:
    original = services.resolve_ip_for_localhost
    with pytest.raises(RuntimeError), keep_loopback():
        raise RuntimeError("ray.init failed")
    assert services.resolve_ip_for_localhost is original


@pytest.mark.slow
@pytest.mark.usefixtures("ray_local")
def test_the_local_cluster_listens_on_loopback_and_is_reused() -> None:
    import ray

    from augflow.tasks.ray_pool import cluster_cpus, ensure_ray

    context = ray.get_runtime_context()
    ensure_ray()  # already initialised: a no-op, same cluster
    assert ray.get_runtime_context().gcs_address == context.gcs_address
    assert context.gcs_address.startswith(f"{LOOPBACK}:")
    assert all(n["NodeManagerAddress"] == LOOPBACK for n in ray.nodes() if n["Alive"])
    assert cluster_cpus() == int(ray.cluster_resources()["CPU"]) >= 1
