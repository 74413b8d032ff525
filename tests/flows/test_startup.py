"""Start-up of ``augflow run`` (flows/startup.py): Ray, the actors and Prefect start side by side
before the flow, in a fresh process as the CLI has it, against a real Prefect server and a real
local Ray."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

_CHILD = """
import json, sys, threading
from augflow.flows import startup
imported_prefect = "prefect" in sys.modules or "torch" in sys.modules
import ray
from augflow.schemas import parse_request
from augflow.tasks import execute, progress
request = parse_request(json.loads(sys.argv[1]))
startup.start_early(request)
pool = execute._early[(request.request_hash, request.output)].pool
startup.warm_up_validation()  # a second call starts no second import
report = {
    "imported_at_module_level": imported_prefect,
    "ray": ray.is_initialized(),
    "prefect_reached": "prefect.client.orchestration" in sys.modules,
    "actors": None if pool is None else len(pool.slots),
    "listeners": progress.has_listeners(),
    "channel_open": pool is not None and pool.channel.open,
    "gx_imports": sum(t.name == "augflow-gx-import" for t in threading.enumerate()),
}
execute.cancel_early(request)
print(json.dumps(report))
"""


def test_start_early_starts_ray_actors_and_prefect_before_the_flow(
    tiny_model: Path, tmp_path: Path, prefect_server: str
) -> None:
    body = {
        "dataset": "startup",
        "operation": {"kind": "generate", "num_images": 2},
        "model": {"id": str(tiny_model)},
        "output": str(tmp_path / "out"),
        "steps": 2,
        "shard_size": 2,
        "execution": {"device": "cpu"},
    }
    env = dict(os.environ, PREFECT_API_URL=prefect_server)
    out = subprocess.run(
        [sys.executable, "-c", _CHILD, json.dumps(body)],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    report = json.loads(out.stdout.strip().splitlines()[-1])
    # importing the module loads neither Prefect nor torch: Ray must not wait for them
    assert report["imported_at_module_level"] is False
    assert report["ray"] is True and report["actors"] == 1
    assert report["prefect_reached"] is True  # the API was called (here: the test server)
    # nobody listens yet (the CLI's display attaches once the flow runs), and still the run's
    # progress channel is open, so the first shard's micro-batches are not lost
    assert report["listeners"] is False and report["channel_open"] is True
    assert report["gx_imports"] <= 1  # one background import at most (it may be done already)


def test_a_run_on_its_own_server_sends_no_heartbeats() -> None:
    """Heartbeats mark crashed runs on a lasting server; a run's own server ends with it, and
    Prefect's heartbeat thread costs up to 1 s at the end of each flow (issue 14)."""
    from prefect.flow_engine import FlowRunEngine
    from prefect.settings import get_current_settings

    from augflow.flows.augment import augment
    from augflow.flows.startup import run_settings

    default = get_current_settings().flows.heartbeat_frequency
    assert default is not None  # Prefect sends them unless told otherwise
    with run_settings(own_server=False):
        assert FlowRunEngine(flow=augment).heartbeat_seconds is not None
    with run_settings(own_server=True):
        assert FlowRunEngine(flow=augment).heartbeat_seconds is None
    assert get_current_settings().flows.heartbeat_frequency == default
