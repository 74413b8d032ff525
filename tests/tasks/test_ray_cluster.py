"""Scale-out: a two-node Ray cluster on 127.0.0.1 (`ray start --head` and a second `ray start`)
runs a request through ``RAY_ADDRESS``, with shards computed on both nodes.

The cluster and the driver are separate processes, so this test never touches the session's local
Ray (``ray_local``). Nodes are started with ``--block`` and stopped by their pids: ``ray stop``
would kill every Ray process of this user on the machine, other test runs' included.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import closing, contextmanager, suppress
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from augflow.schemas import parse_request
from augflow.tasks.layout import RunLayout

pytestmark = pytest.mark.slow

LOOPBACK = "127.0.0.1"

# Runs in its own process with RAY_ADDRESS set: plans the request, executes it on the cluster and
# reports the results and the nodes the driver saw.
DRIVER = """
import json, sys, time
import ray
from augflow.schemas import parse_request
from augflow.tasks.execute import execute_plan
from augflow.tasks.plan import plan_request
from augflow.tasks.ray_pool import ensure_ray

request = parse_request(json.loads(open(sys.argv[1]).read()))
ensure_ray()
deadline = time.monotonic() + 60
while sum(n["Alive"] for n in ray.nodes()) < 2 and time.monotonic() < deadline:
    time.sleep(0.5)
results = execute_plan(request, plan_request(request))
out = {
    "gcs_address": ray.get_runtime_context().gcs_address,
    "driver_ip": ray.util.get_node_ip_address(),
    "nodes": [
        {"id": n["NodeID"], "ip": n["NodeManagerAddress"], "cpus": n["Resources"].get("CPU", 0)}
        for n in ray.nodes() if n["Alive"]
    ],
    "results": [r.model_dump(mode="json") for r in results],
}
open(sys.argv[2], "w").write(json.dumps(out))
"""


def _free_port() -> int:
    with closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as s:
        s.bind((LOOPBACK, 0))
        return s.getsockname()[1]


def _wait_for_port(port: int, proc: subprocess.Popen, log: Path, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"ray head exited ({proc.returncode}):\n{log.read_text()[-3000:]}")
        with closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as s:
            if s.connect_ex((LOOPBACK, port)) == 0:
                return
        time.sleep(0.5)
    raise TimeoutError(f"ray head not listening on {port}:\n{log.read_text()[-3000:]}")


def _stop(proc: subprocess.Popen) -> None:
    """SIGTERM the blocking `ray start`, which stops its node's processes; then its group."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        with suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=20)
    # The node's processes share the session we gave the launcher; make sure none outlives it.
    with suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=10)


@contextmanager
def loopback_cluster() -> Iterator[tuple[str, dict[str, str]]]:
    """A head and a worker node, 1 CPU each, on 127.0.0.1 with token auth; yields the address and
    the environment a driver needs to join it."""
    # A private, short temp dir (Unix socket paths are limited to 107 bytes): `ray start` records
    # its address there, so a plain `ray.init()` elsewhere on the machine never finds this cluster.
    root = Path(tempfile.mkdtemp(prefix="augray-", dir="/tmp"))
    token = root / "token"
    token.write_text(secrets.token_hex(32))
    token.chmod(0o600)
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update(
        # Every node and driver must agree on the mode; joining nodes never turn it on by
        # themselves. A token of our own keeps ~/.ray/auth_token (shared) untouched.
        RAY_AUTH_MODE="token",
        RAY_AUTH_TOKEN_PATH=str(token),
        RAY_USAGE_STATS_ENABLED="0",
    )
    port = _free_port()
    launcher = [sys.executable, "-m", "augflow.tasks.ray_pool", "start", "--block"]
    common = [
        f"--node-ip-address={LOOPBACK}",
        "--num-cpus=1",
        "--num-gpus=0",
        "--disable-usage-stats",
        # Fixed default ports would collide between two nodes on one host.
        f"--dashboard-agent-listen-port={_free_port()}",
    ]
    head_cmd = [
        *launcher,
        "--head",
        f"--port={port}",
        f"--temp-dir={root / 'ray'}",
        "--include-dashboard=false",
        f"--dashboard-port={_free_port()}",
        *common,
    ]
    worker_cmd = [*launcher, f"--address={LOOPBACK}:{port}", *common]
    procs: list[subprocess.Popen] = []
    try:
        head_log = root / "head.log"
        with head_log.open("wb") as fh:
            procs.append(
                subprocess.Popen(
                    head_cmd, env=env, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True
                )
            )
        _wait_for_port(port, procs[0], head_log)
        with (root / "worker.log").open("wb") as fh:
            procs.append(
                subprocess.Popen(
                    worker_cmd, env=env, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True
                )
            )
        yield f"{LOOPBACK}:{port}", {**env, "RAY_ADDRESS": f"{LOOPBACK}:{port}"}
    finally:
        for proc in reversed(procs):
            _stop(proc)
        shutil.rmtree(root, ignore_errors=True)


def test_two_nodes_on_loopback_compute_shards_on_both(tiny_model: Path, tmp_path: Path) -> None:
    body = {
        "dataset": "scale-out",
        "operation": {"kind": "generate", "num_images": 8},
        "model": {"id": str(tiny_model)},
        "output": str(tmp_path / "out"),
        "steps": 2,
        "shard_size": 1,
        "execution": {"workers": 2, "device": "cpu"},
    }
    request = parse_request(body)
    (tmp_path / "request.json").write_text(json.dumps(body))
    out = tmp_path / "driver.json"
    with loopback_cluster() as (address, env):
        proc = subprocess.run(
            [sys.executable, "-c", DRIVER, str(tmp_path / "request.json"), str(out)],
            env=env,
            capture_output=True,
            text=True,
            timeout=150,
        )
    assert proc.returncode == 0, proc.stderr[-4000:]
    report = json.loads(out.read_text())

    # Everything on loopback: the cluster address, both nodes and the driver.
    assert report["gcs_address"] == address
    assert report["driver_ip"] == LOOPBACK
    assert len(report["nodes"]) == 2
    assert {n["ip"] for n in report["nodes"]} == {LOOPBACK}

    results = report["results"]
    assert len(results) == 8 and {r["status"] for r in results} == {"computed"}
    assert {r["node_id"] for r in results} == {n["id"] for n in report["nodes"]}

    # Every row committed exactly once; the markers do not depend on where a shard ran.
    root = tmp_path / "out"
    layout = RunLayout(request.request_hash)
    row_ids: list[str] = []
    for r in results:
        marker = json.loads((root / layout.commit_marker(r["shard_id"])).read_text())
        assert "node_id" not in marker
        row_ids += pq.read_table(root / r["data_file"], columns=["row_id"]).column(0).to_pylist()
    assert len(row_ids) == len(set(row_ids)) == 8
