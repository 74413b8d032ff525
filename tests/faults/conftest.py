"""Fixtures of the fault suite: one SeaweedFS with an admin and a least-privilege identity, a
fault-injecting proxy in front of it, and a local Ray whose workers know the fault models.

Everything listens on 127.0.0.1. Each test injects one fault and checks the same promise
(:func:`faults.checks.assert_one_version`): no row lost, none duplicated, exactly one registered
version.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest
from faults.fault_models import SETUP_HOOK
from faults.proxy import FaultProxy
from s3_fixtures import S3Server, _free_base_port

from augflow.tasks import credentials

BUCKET = "faults"
TESTS = Path(__file__).resolve().parents[1]
#: the least-privilege identity may read INPUTS and read/write OUTPUTS, nothing else
INPUTS, OUTPUTS = "inputs", "outputs"


@pytest.fixture(scope="session")
def fault_store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    base = tmp_path_factory.mktemp("fault-seaweedfs")
    admin_secret = "CANARY" + secrets.token_hex(16)
    limited_secret = "CANARY" + secrets.token_hex(16)
    identities = base / "identities.json"
    # Same shape as infra/seaweedfs/identities.least-privilege.example.json, with fresh secrets.
    example = json.loads(
        (TESTS.parent / "infra" / "seaweedfs" / "identities.least-privilege.example.json")
        .read_text()
        .replace("augflow/", f"{BUCKET}/")
    )
    for ident in example["identities"]:
        ident["credentials"][0]["secretKey"] = (
            admin_secret if ident["name"] == "augflow-admin" else limited_secret
        )
    identities.write_text(json.dumps(example))
    port = _free_base_port()
    admin = example["identities"][0]["credentials"][0]["accessKey"]
    server = S3Server(port, base / "data", identities, admin, admin_secret, bucket=BUCKET)
    server.env = {
        **os.environ,
        "SEAWEEDFS_S3_PORT": str(port),
        "SEAWEEDFS_DIR": str(server.data_dir),
        "SEAWEEDFS_IDENTITIES": str(identities),
        "SEAWEEDFS_BUCKETS": BUCKET,
    }
    limited = example["identities"][1]["credentials"][0]
    server.limited = (limited["accessKey"], limited_secret)  # type: ignore[attr-defined]
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def proxy(fault_store: S3Server) -> Iterator[FaultProxy]:
    with FaultProxy(fault_store.port) as p:
        yield p


@pytest.fixture
def s3(fault_store: S3Server, proxy: FaultProxy, monkeypatch: pytest.MonkeyPatch) -> FaultProxy:
    """The admin identity, talking to the store through the proxy (the driver; actors get the
    driver's settings forwarded)."""
    monkeypatch.delenv(credentials.BLOCK_ENV, raising=False)
    for name, value in fault_store.aws_env().items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("AUGFLOW_S3_ENDPOINT_URL", proxy.endpoint)
    monkeypatch.setenv("AUGFLOW_S3_RETRY_SECONDS", "60")
    credentials.clear_cache()
    yield proxy
    credentials.clear_cache()


@pytest.fixture
def s3_root(s3: FaultProxy, request: pytest.FixtureRequest) -> str:
    return f"s3://{BUCKET}/{OUTPUTS}/{request.node.name[:40]}-{secrets.token_hex(3)}"


@pytest.fixture(scope="session")
def fault_ray() -> Iterator[None]:
    """A local Ray whose workers register the fault models (a worker_process_setup_hook), with
    5 MiB multipart parts so shard files of a few MiB go up in parts."""
    import ray
    from faults.fault_models import register

    from augflow.tasks import ray_reaper
    from augflow.tasks.ray_pool import LOOPBACK, ensure_ray, keep_loopback

    register()
    was_running = ray.is_initialized()
    if was_running:
        ray.shutdown()
    path = os.pathsep.join(p for p in (str(TESTS), os.environ.get("PYTHONPATH")) if p)
    with keep_loopback():
        ray.init(
            _node_ip_address=LOOPBACK,
            include_dashboard=False,
            logging_level=logging.WARNING,
            runtime_env={
                "worker_process_setup_hook": SETUP_HOOK,
                "env_vars": {"PYTHONPATH": path, "AUGFLOW_S3_PART_SIZE_MB": "5"},
            },
        )
    ray_reaper.guard_local_ray()
    try:
        yield
    finally:
        ray.shutdown()
        if was_running:
            ensure_ray()
