"""Warm on-demand runs: a real Prefect server, the repo's ``on-demand`` deployment (process work
pool), ``augflow worker`` on a long-lived Ray, and requests submitted one after another with
``augflow.flows.submit`` (what ``augflow submit`` calls), each for the same model. ``mode``:
``pool`` (a Prefect process worker: a process per flow run) or ``serve`` (``--serve``: flow runs
in the worker's own process).

Per request: ``submit_to_compute_s`` — from our ``submit`` call to the moment the actor began the
request's first shard (the overhead the person pays before compute: the worker's poll, the flow
run's process start and imports, Prefect's bookkeeping, connecting to Ray, leasing actors);
``flow_start_to_compute_s`` — the same from the flow run's start time on the server (so without
the poll and the process start); ``submit_to_done_s``; and the actor's pid and model loads.
The first request starts the actor (cold); the others find it warm.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

from bench.e2e import ROOT

STATS = """
import json
import ray
from augflow.tasks import warm_pool
from augflow.tasks.ray_pool import ensure_ray
ensure_ray()
out = []
for name in warm_pool.warm_actors():
    out.append(ray.get(ray.get_actor(name, namespace=warm_pool.NAMESPACE).stats.remote()))
print(json.dumps(out))
"""


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_http(url: str, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            urllib.request.urlopen(url, timeout=2)
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    from augflow.flows.worker import stop_process_group

    stop_process_group(proc)


def run(
    p: dict[str, Any], modes: list[str], work: Path, base_env: dict[str, str]
) -> dict[str, dict[str, Any]]:
    """Each of ``modes`` in turn against one Prefect server and one deployment: the server and
    the deployment are the same for both modes, so starting them once changes no measurement."""
    work.mkdir(parents=True, exist_ok=True)
    port = _free_port()
    env = {
        **base_env,
        "PREFECT_HOME": str(work / "prefect-home"),
        "PREFECT_API_URL": f"http://127.0.0.1:{port}/api",
        "PREFECT_UI_ENABLED": "false",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    }
    cmd = [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1"]
    server = subprocess.Popen(
        [*cmd, "--port", str(port)],
        env=env,
        stdout=(work / "server.log").open("wb"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        _wait_http(f"http://127.0.0.1:{port}/api/health")

        def prefect(*args: str) -> None:
            subprocess.run(
                [sys.executable, "-m", "prefect", *args],
                env=env,
                cwd=ROOT,
                check=True,
                capture_output=True,
                timeout=600,
            )

        prefect("work-pool", "create", "augflow-local", "--type", "process")
        prefect("--no-prompt", "deploy", "--prefect-file", "infra/prefect.yaml", "-n", "on-demand")
        return {mode: _run_mode({**p, "mode": mode}, work / mode, env) for mode in modes}
    finally:
        _stop(server)


def _run_mode(p: dict[str, Any], work: Path, server_env: dict[str, str]) -> dict[str, Any]:
    """A long-lived Ray and ``augflow worker`` in ``p["mode"]``, then the requests, one by one."""
    from augflow.flows.worker import long_lived_ray

    work.mkdir(parents=True, exist_ok=True)
    env = {**server_env, "AUGFLOW_ROOT": str(work / "root")}
    worker_proc: subprocess.Popen[bytes] | None = None
    try:
        with long_lived_ray() as ray_env:
            env.update({k: v for k, v in ray_env.items() if k.startswith("RAY_")})
            worker = [sys.executable, "-m", "augflow.flows.cli", "worker", "--pool"]
            worker += ["augflow-local", "--idle-timeout", str(p["idle_timeout"])]
            if p["mode"] == "serve":
                worker += ["--serve", "augment/on-demand"]
            worker_proc = subprocess.Popen(
                worker,
                env=env,
                cwd=ROOT,
                stdout=(work / "worker.log").open("wb"),
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
            requests = _submit_all(p, env, work)
            stats = _actor_stats(env)
            worker_proc.send_signal(signal.SIGTERM)  # the worker ends its warm actors
            worker_proc.wait(timeout=120)
    finally:
        if worker_proc is not None:
            _stop(worker_proc)
    by_pid = {a["pid"]: a for a in stats}
    for r in requests:
        for a in stats:
            started = a.get("first_shard_started_by_request", {}).get(r["request_hash"])
            if started is not None:
                r["pid"] = a["pid"]
                r["submit_to_compute_s"] = started - r["submitted_at"]
                r["flow_start_to_compute_s"] = started - r["flow_started_at"]
    return {
        "requests": requests,
        "actors": [
            {k: v for k, v in a.items() if k in ("pid", "model_loads", "requests", "shards")}
            for a in by_pid.values()
        ],
    }


def _last_json_line(args: list[str], env: dict[str, str], what: str, timeout: float) -> Any:
    """Run a Python child; its last stdout line is its JSON answer."""
    proc = subprocess.run(
        [sys.executable, *args], env=env, cwd=ROOT, capture_output=True, text=True, timeout=timeout
    )
    if proc.returncode != 0:
        raise SystemExit(f"{what} failed:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _submit_all(p: dict[str, Any], env: dict[str, str], work: Path) -> list[dict[str, Any]]:
    """Submit the requests one after another from a child process that talks to this server."""
    script = work / "submit.py"
    script.write_text(
        """
import json, sys, time
from augflow.flows.submit import submit, wait
from augflow.schemas import parse_request
out = []
for body in json.loads(open(sys.argv[1]).read()):
    request = parse_request(body)
    t0 = time.time()
    run = submit(request)
    final = wait(run, timeout=900, poll=0.2)
    t1 = time.time()
    out.append({
        "dataset": request.dataset, "request_hash": request.request_hash,
        "submitted_at": t0, "done_at": t1, "submit_to_done_s": t1 - t0,
        "state": final.state.name if final.state else None,
        "flow_started_at": final.start_time.timestamp() if final.start_time else None,
    })
    time.sleep(1.0)
print(json.dumps(out))
"""
    )
    bodies = [
        {
            "dataset": f"warm-{i}",
            "operation": {"kind": "generate", "num_images": p["n"]},
            "model": {"id": str(p["model"])},
            "steps": p["steps"],
            "seed": i,
            "output": str(work / "root"),
        }
        for i in range(p["requests"])
    ]
    (work / "requests.json").write_text(json.dumps(bodies))
    args = [str(script), str(work / "requests.json")]
    return list(_last_json_line(args, env, "warm submissions", timeout=3600))


def _actor_stats(env: dict[str, str]) -> list[dict[str, Any]]:
    env = {**env, "PYTHONPATH": os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])}
    return list(_last_json_line(["-c", STATS], env, "reading warm actor stats", timeout=300))
