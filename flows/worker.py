"""``augflow worker``: a Prefect worker whose flow runs find their models already loaded.

    augflow worker --pool augflow-local            # instead of `prefect worker start --pool ...`
    augflow worker --pool augflow-local --idle-timeout 900
    augflow worker --serve augment/on-demand       # flow runs in this process: no start-up at all

Each flow run a Prefect worker starts is a new process; on its own it would start Ray, start its
actors and load its model every time. ``augflow worker`` keeps one Ray running for as long as it
runs (its own on 127.0.0.1, or the cluster in ``RAY_ADDRESS``), enables warm actors there
(:mod:`augflow.tasks.warm_pool`: actors that keep a loaded model for ``--idle-timeout`` seconds
after their last shard) and runs ``prefect worker start --pool POOL`` with ``RAY_ADDRESS`` set, so
every flow run it starts — on-demand submissions (``augflow submit``) and scheduled ones — leases
actors that already hold its model. On exit it ends the warm actors and the Ray it started.

``--serve FLOW/DEPLOYMENT`` goes one step further for on-demand requests: instead of a Prefect
worker that starts a process per flow run (which imports Prefect, augflow and Ray and connects
before the flow does anything), this process claims the deployment's scheduled runs itself and
runs them with Prefect's engine in its own threads, already connected, already imported
(:func:`serve_in_process`).

The local Ray runs its actors at this process's niceness and uses token authentication with a
token of its own (a 0600 file in a private temp folder), handed to the flow runs through
``RAY_AUTH_MODE``/``RAY_AUTH_TOKEN_PATH``.
"""

from __future__ import annotations

import contextlib
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
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Annotated, Any

import typer

#: How often the Prefect worker asks for scheduled runs unless PREFECT_WORKER_QUERY_SECONDS is set
#: (Prefect's default, 10 s, would be most of a warm request's wait).
QUERY_SECONDS = "1"


def worker(
    pool: Annotated[str, typer.Option("--pool", help="Prefect work pool to serve")] = (
        "augflow-local"
    ),
    idle_timeout: Annotated[
        float, typer.Option("--idle-timeout", help="seconds a warm actor keeps its model unused")
    ] = 600.0,
    cpus: Annotated[
        int | None, typer.Option("--cpus", help="CPUs of the local Ray (default: all)")
    ] = None,
    serve: Annotated[
        str | None,
        typer.Option(
            "--serve",
            help="run this deployment's flow runs in this process (FLOW/DEPLOYMENT, e.g. "
            "augment/on-demand) instead of a process per run: no start-up per request",
        ),
    ] = None,
    concurrency: Annotated[
        int, typer.Option("--concurrency", help="with --serve: flow runs at once")
    ] = 2,
) -> None:
    """Run a Prefect worker for POOL whose flow runs reuse loaded models (warm Ray actors)."""
    with long_lived_ray(cpus) as env:
        enable_warm_actors(env, idle_timeout)
        if serve is not None:
            os.environ.update({k: v for k, v in env.items() if k.startswith("RAY_")})
            serve_in_process(serve, concurrency)
            with contextlib.suppress(Exception):
                disable_warm_actors(env)
            return
        env.setdefault("PREFECT_WORKER_QUERY_SECONDS", QUERY_SECONDS)
        cmd = [sys.executable, "-m", "prefect", "worker", "start", "--pool", pool]
        proc = subprocess.Popen(cmd, env=env)
        stop = _forward_signals(proc)
        try:
            code = proc.wait()
        finally:
            stop()
            with contextlib.suppress(Exception):
                disable_warm_actors(env)
    if code not in (0, -signal.SIGTERM, -signal.SIGINT):
        raise typer.Exit(code)


#: How often ``--serve`` asks the Prefect API for scheduled runs of its deployment.
SERVE_POLL_S = 0.5


def serve_in_process(deployment: str, concurrency: int = 2, poll_s: float = SERVE_POLL_S) -> None:
    """Run the scheduled flow runs of ``deployment`` in this process until SIGINT/SIGTERM.

    A Prefect worker starts a process per flow run, which imports Prefect, augflow and Ray and
    connects to the cluster before the flow does anything (seconds; on a loaded machine, more than
    ten). Here all of that happened once: each run claims its flow run (a Pending proposal, which
    Prefect grants to one claimant only) and runs it with Prefect's own engine in a thread of this
    process, on the Ray connection and the warm actors already there. What is lost against a
    process per run: a run that hangs holds a thread, and cancelling a run from the UI does not
    stop it mid-flight.
    """
    import concurrent.futures as cf
    import logging
    import threading

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.responses import SetStateStatus
    from prefect.flow_engine import run_flow
    from prefect.states import Pending

    from augflow.flows.augment import augment
    from augflow.flows.startup import warm_up_validation
    from augflow.tasks.ray_pool import ensure_ray

    log = logging.getLogger("augflow.worker")
    ensure_ray()  # one connection, kept: every flow run here uses it
    warm_up_validation()
    stopping = threading.Event()
    previous = {
        sig: signal.signal(sig, lambda *_: stopping.set())
        for sig in (signal.SIGINT, signal.SIGTERM)
    }
    running: set[cf.Future[Any]] = set()

    def run(flow_run: Any) -> None:
        try:
            run_flow(augment, flow_run=flow_run, parameters=flow_run.parameters)
        except Exception as exc:  # Prefect has recorded the failure on the flow run
            log.warning("flow run %s failed: %s", flow_run.name, exc)

    try:
        with (
            get_client(sync_client=True) as client,
            cf.ThreadPoolExecutor(concurrency, thread_name_prefix="augflow-flow-run") as pool,
        ):
            flow_name, _, name = deployment.partition("/")
            dep = client.read_deployment_by_name(f"{flow_name}/{name}")
            log.warning("serving %s in this process", deployment)
            while not stopping.is_set():
                running = {f for f in running if not f.done()}
                free = concurrency - len(running)
                if free > 0:
                    now = _utcnow()
                    for fr in client.get_scheduled_flow_runs_for_deployments(
                        deployment_ids=[dep.id], scheduled_before=now, limit=free
                    ):
                        claim: Any = client.set_flow_run_state(fr.id, Pending())
                        if claim.status == SetStateStatus.ACCEPT:
                            running.add(pool.submit(run, fr))
                stopping.wait(poll_s)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _utcnow() -> Any:
    import datetime

    return datetime.datetime.now(datetime.UTC)


@contextlib.contextmanager
def long_lived_ray(cpus: int | None = None) -> Iterator[dict[str, str]]:
    """The environment of a process that should use this worker's Ray: the cluster in
    ``RAY_ADDRESS`` if set, else a head started here on 127.0.0.1 and stopped on exit."""
    env = dict(os.environ)
    if env.get("RAY_ADDRESS"):
        yield env
        return
    from augflow.tasks.ray_pool import LOOPBACK, local_system_config

    root = Path(tempfile.mkdtemp(prefix="augw-", dir="/tmp"))  # short: Unix socket paths
    token = root / "token"
    token.write_text(secrets.token_hex(32))
    token.chmod(0o600)
    port = _free_port()
    env.update(
        RAY_AUTH_MODE="token",
        RAY_AUTH_TOKEN_PATH=str(token),
        RAY_USAGE_STATS_ENABLED=env.get("RAY_USAGE_STATS_ENABLED", "0"),
    )
    cmd = [
        sys.executable,
        "-m",
        "augflow.tasks.ray_pool",
        "start",
        "--head",
        "--block",
        f"--node-ip-address={LOOPBACK}",
        f"--port={port}",
        f"--temp-dir={root / 'ray'}",
        "--include-dashboard=false",
        f"--dashboard-port={_free_port()}",
        f"--dashboard-agent-listen-port={_free_port()}",
        "--disable-usage-stats",
        f"--system-config={json.dumps(local_system_config())}",
    ]
    if cpus is not None:
        cmd.append(f"--num-cpus={cpus}")
    log = (root / "ray-head.log").open("wb")
    head = subprocess.Popen(
        cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    try:
        _wait_for_port(port, head, root / "ray-head.log")
        env["RAY_ADDRESS"] = f"{LOOPBACK}:{port}"
        yield env
    finally:
        stop_process_group(head)
        log.close()
        shutil.rmtree(root, ignore_errors=True)


def enable_warm_actors(env: dict[str, str], idle_timeout: float) -> None:
    _in_subprocess(env, f"warm_pool.enable({idle_timeout!r})")


def disable_warm_actors(env: dict[str, str]) -> None:
    _in_subprocess(env, "warm_pool.disable()")


def _in_subprocess(env: dict[str, str], call: str) -> None:
    # A short-lived driver: this process never joins the cluster itself, so it holds nothing
    # there and stays free to supervise the Prefect worker.
    code = (
        "from augflow.tasks import warm_pool\n"
        "from augflow.tasks.ray_pool import ensure_ray\n"
        f"ensure_ray()\n{call}\n"
    )
    subprocess.run([sys.executable, "-c", code], env=env, check=True, timeout=300)


def stop_process_group(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM a process started in its own session, then SIGKILL what is left of its group."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=20)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=10)


def _forward_signals(proc: subprocess.Popen[bytes]) -> Callable[[], None]:
    previous: dict[int, Any] = {}

    def forward(signum: int, _frame: object) -> None:
        if proc.poll() is None:
            proc.send_signal(signum)

    for sig in (signal.SIGINT, signal.SIGTERM):
        previous[sig] = signal.signal(sig, forward)

    def restore() -> None:
        for sig, handler in previous.items():
            signal.signal(sig, handler)

    return restore


def _free_port() -> int:
    with contextlib.closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_for_port(
    port: int, proc: subprocess.Popen[bytes], log: Path, timeout: float = 120
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"ray head exited ({proc.returncode}):\n{log.read_text()[-3000:]}")
        with contextlib.closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.3)
    raise TimeoutError(f"ray head not listening on {port} after {timeout:.0f} s")
