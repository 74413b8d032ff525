"""Deployments as production uses them: a real Prefect server, a Process worker, the repo's
deployment file, a scheduled run and on-demand submissions (all on 127.0.0.1)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
AUGFLOW = [sys.executable, "-m", "augflow.flows.cli"]

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """A Prefect server with its scheduler, a process work pool, the deployments and a worker."""
    home = tmp_path_factory.mktemp("prefect-home")
    port = _free_port()
    env = {
        **os.environ,
        "PREFECT_HOME": str(home),
        "PREFECT_API_URL": f"http://127.0.0.1:{port}/api",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS": "1",
        "PREFECT_WORKER_QUERY_SECONDS": "1",
        "PREFECT_WORKER_PREFETCH_SECONDS": "1",
        "PREFECT_UI_ENABLED": "false",
        "AUGFLOW_ROOT": str(tmp_path_factory.mktemp("augflow-root")),
        "HF_HUB_OFFLINE": "1",
    }
    procs: list[subprocess.Popen] = []
    logs = home / "logs"
    logs.mkdir()
    try:
        procs.append(
            subprocess.Popen(
                [
                    str(BIN / "prefect"),
                    "server",
                    "start",
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(port),
                ],
                env=env,
                stdout=open(logs / "server.log", "wb"),  # noqa: SIM115 - lives as long as the server
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        )
        deadline = time.monotonic() + 120
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/api/health", timeout=2)
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError((logs / "server.log").read_text()[-3000:]) from None
                time.sleep(0.5)

        def prefect(*args: str) -> str:
            proc = subprocess.run(
                [str(BIN / "prefect"), *args],
                env=env,
                cwd=REPO,
                capture_output=True,
                text=True,
                timeout=300,
            )
            assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
            return proc.stdout

        prefect("work-pool", "create", "augflow-local", "--type", "process")
        prefect("--no-prompt", "deploy", "--all", "--prefect-file", "infra/prefect.yaml")
        # The zombie-run automation is accepted by a real server as written in the repo.
        prefect("automation", "create", "--from-file", "infra/prefect-zombie-automation.yaml")
        shown = prefect("automation", "inspect", "augflow-crash-zombie-flow-runs", "--json")
        assert '"prefect.flow-run.heartbeat"' in shown and "CRASHED" in shown
        procs.append(
            subprocess.Popen(
                [str(BIN / "prefect"), "worker", "start", "--pool", "augflow-local"],
                env=env,
                cwd=REPO,
                stdout=open(logs / "worker.log", "wb"),  # noqa: SIM115 - lives as long as the worker
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        )
        yield env
    finally:
        for p in reversed(procs):
            try:
                os.killpg(p.pid, signal.SIGTERM)
                p.wait(timeout=30)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                os.killpg(p.pid, signal.SIGKILL)


def _client(env: dict[str, str]):
    from prefect.client.orchestration import SyncPrefectClient

    return SyncPrefectClient(env["PREFECT_API_URL"])


def test_deployment_file_declares_schedules_and_the_request_form() -> None:
    doc = yaml.safe_load((REPO / "infra/prefect.yaml").read_text())
    nightly = next(d for d in doc["deployments"] if d["name"] == "nightly")
    slugs = {s["slug"] for s in nightly["schedules"]}
    assert slugs == {"nightly-denoise-photos", "weekly-generate-faces"}
    assert all(s["timezone"] for s in nightly["schedules"])
    # Heartbeats are what the zombie automation watches.
    env = nightly["work_pool"]["job_variables"]["env"]
    assert int(env["PREFECT_FLOWS_HEARTBEAT_FREQUENCY"]) > 0
    from augflow.schemas import parse_request

    for s in nightly["schedules"]:  # every schedule's request is a valid request
        parse_request({**s["parameters"]["request"], "output": "/tmp/x"})


def test_scheduled_run_registers_a_version(stack: dict[str, str]) -> None:
    from datasets import load_dataset
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterName
    from prefect.states import Scheduled

    from augflow.tasks.register import get_version
    from augflow.tasks.storage import Storage

    with _client(stack) as client:
        deadline = time.monotonic() + 120
        run = None
        while run is None and time.monotonic() < deadline:
            runs = client.read_flow_runs(
                deployment_filter=DeploymentFilter(name=DeploymentFilterName(any_=["nightly"]))
            )
            weekly = [r for r in runs if r.parameters["request"]["dataset"] == "faces-generated"]
            run = min(weekly, key=lambda r: r.expected_start_time) if weekly else None
            time.sleep(1)
        assert run is not None, "the scheduler created no run for the weekly schedule"
        assert run.parameters["request"]["output"] == stack["AUGFLOW_ROOT"]
        # Bring the scheduled run forward to now, as if its cron time had come.
        client.set_flow_run_state(run.id, Scheduled(), force=True)
        deadline = time.monotonic() + 900
        while time.monotonic() < deadline:
            state = client.read_flow_run(run.id).state
            if state is not None and state.is_final():
                break
            time.sleep(2)
        assert state is not None and state.is_completed(), state
    entry = get_version(Storage(stack["AUGFLOW_ROOT"]), "faces-generated", "latest")
    ds = load_dataset(
        "parquet",
        data_files=[str(Path(stack["AUGFLOW_ROOT"]) / f.key) for f in entry.files],
        split="train",
    )
    assert len(ds) == 16 and ds[0]["image"].size == (32, 32)


def test_submit_twice_starts_one_run_and_wait_prints_the_version(
    stack: dict[str, str], tiny_model: Path, tmp_path: Path
) -> None:
    req = tmp_path / "req.yaml"
    req.write_text(
        yaml.safe_dump(
            {
                "dataset": "on-demand-gen",
                "operation": {"kind": "generate", "num_images": 4},
                "model": {"id": str(tiny_model)},
                "output": str(tmp_path / "out"),
                "steps": 3,
            }
        )
    )
    first = subprocess.run(
        [*AUGFLOW, "submit", str(req)], env=stack, capture_output=True, text=True, timeout=120
    )
    second = subprocess.run(
        [*AUGFLOW, "submit", str(req), "--wait", "--timeout", "900"],
        env=stack,
        capture_output=True,
        text=True,
        timeout=1000,
    )
    assert first.returncode == 0, first.stderr[-2000:]
    assert second.returncode == 0, second.stderr[-2000:] + second.stdout[-2000:]
    run_id = first.stdout.split()[2]
    assert second.stdout.split()[2] == run_id  # the same flow run, not a second one
    ref = second.stdout.strip().splitlines()[-1].split()[0]
    assert ref.startswith("on-demand-gen@")

    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterName

    with _client(stack) as client:
        runs = client.read_flow_runs(
            deployment_filter=DeploymentFilter(name=DeploymentFilterName(any_=["on-demand"]))
        )
    assert [str(r.id) for r in runs] == [run_id]

    show = subprocess.run(
        [*AUGFLOW, "datasets", "show", ref, "--json", "--root", str(tmp_path / "out")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert show.returncode == 0 and '"num_rows": 4' in show.stdout
