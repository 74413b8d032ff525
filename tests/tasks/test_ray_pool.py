"""Connecting to Ray on loopback: address parsing, the loopback-keeping patch, the local cluster.

The two-node cluster through RAY_ADDRESS is tests/tasks/test_ray_cluster.py."""

from __future__ import annotations

import os

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


# --- actors: how many, how many threads, at what priority ---------------------------------------


@pytest.mark.parametrize(
    ("cores", "memory_gb", "weights_mb", "threads"),
    [
        (2, 16, 7, 1),  # the dev box and a bundled model: an actor per core
        (64, 512, 7, 1),
        (64, 64, 4000, 12),  # 5 actors of a 4 GB model (12.7 GB each) fit: 12 threads each
        (8, 1, 4000, 8),  # not even one fits: one actor with every core
        (16, 0, 4000, 1),  # memory unknown: an actor per core
    ],
)
def test_cpu_threads_come_from_the_machine_and_the_model(
    cores: int, memory_gb: float, weights_mb: int, threads: int
) -> None:
    from augflow.tasks.ray_pool import cpu_threads

    assert cpu_threads(cores, memory_gb * 2**30, weights_mb * 2**20) == threads


def test_model_weight_bytes_reads_a_local_folder(tmp_path) -> None:
    from augflow.schemas.request import ModelSpec
    from augflow.tasks.ray_pool import UNKNOWN_WEIGHT_BYTES, model_weight_bytes

    (tmp_path / "unet").mkdir()
    (tmp_path / "unet" / "diffusion_pytorch_model.safetensors").write_bytes(b"x" * 1000)
    (tmp_path / "model_index.json").write_text("{}")
    assert model_weight_bytes(ModelSpec(id=str(tmp_path))) == 1000
    assert model_weight_bytes(ModelSpec(id="owner/hub-model")) == UNKNOWN_WEIGHT_BYTES


@pytest.mark.slow
@pytest.mark.usefixtures("ray_local")
def test_layout_threads_do_not_depend_on_workers_or_the_job(tiny_model) -> None:
    from augflow.schemas import parse_request
    from augflow.tasks.ray_pool import cluster_cpus, pool_layout

    def layout(workers: int | None, pending: int):
        body = {
            "dataset": "layout",
            "operation": {"kind": "generate", "num_images": 4},
            "model": {"id": str(tiny_model)},
            "execution": {"workers": workers, "device": "cpu"},
        }
        return pool_layout(parse_request(body), pending)

    default = layout(None, 1000)
    assert default.device == "cpu" and default.encode_threads == 0
    assert default.actors == cluster_cpus() // default.threads  # the whole cluster, by default
    assert default.num_cpus == default.threads
    # bytes can depend on intra-op threads, so they never follow the job or `workers`
    for workers, pending in ((1, 1000), (7, 1000), (None, 1), (3, 2)):
        got = layout(workers, pending)
        assert got.threads == default.threads
        assert got.actors == min(workers or default.actors, pending)


def test_set_niceness_moves_this_process_up_and_reports_what_it_has() -> None:
    import subprocess
    import sys

    code = (
        "import os\n"
        "from augflow.tasks.ray_pool import set_niceness\n"
        "now = os.getpriority(os.PRIO_PROCESS, 0)\n"
        "print(set_niceness(None) == now, set_niceness(now + 3) == now + 3,"
        " os.getpriority(os.PRIO_PROCESS, 0) == now + 3)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["True", "True", "True"]


def test_a_cluster_augflow_starts_runs_actors_at_the_driver_niceness() -> None:
    from augflow.tasks.ray_pool import actor_niceness, local_system_config

    assert local_system_config() == {"worker_niceness": actor_niceness()}
    assert actor_niceness() == os.getpriority(os.PRIO_PROCESS, 0)
