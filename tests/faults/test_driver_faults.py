"""The driver dies: `augflow run` SIGKILLed while a shard's data file is written and its commit
marker is in flight. Its local Ray must not outlive it by more than a few seconds (or the next
start reaps it), and a re-run must register every row exactly once."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from faults.checks import assert_one_version
from faults.proxy import FaultProxy, Rule

from augflow.tasks import ray_reaper
from augflow.tasks.commits import shard_state
from augflow.tasks.layout import RunLayout
from augflow.tasks.storage import Storage

pytestmark = pytest.mark.slow

AUGFLOW = [sys.executable, "-m", "augflow.flows.cli"]
COMMIT = r"/runs/(?P<run>[0-9a-f]{16})/commits/(?P<sid>[^/?]+)\.json$"


@pytest.fixture
def private_tmp() -> Iterator[str]:
    """A short private TMPDIR: Ray's session folder and the reaper's records stay this test's
    (short, because Ray's socket paths must fit in 107 bytes)."""
    path = tempfile.mkdtemp(prefix="af-", dir="/tmp")
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _alive(tree: dict[int, int]) -> dict[int, int]:
    return {p: s for p, s in tree.items() if ray_reaper._alive(p, s)}


def _wait_gone(tree: dict[int, int], timeout: float) -> float:
    start = time.monotonic()
    while _alive(tree) and time.monotonic() - start < timeout:
        time.sleep(0.1)
    assert not _alive(tree), [Path(f"/proc/{p}/cmdline").read_bytes()[:80] for p in _alive(tree)]
    return time.monotonic() - start


def test_driver_killed_between_data_write_and_marker(
    s3: FaultProxy,
    s3_root: str,
    tiny_model: Path,
    prefect_server: str,
    tmp_path: Path,
    private_tmp: str,
) -> None:
    hold = s3.add(Rule("hold", method="PUT", path=COMMIT, times=1))
    req = tmp_path / "req.yaml"
    req.write_text(
        yaml.safe_dump(
            {
                "dataset": "driver-killed",
                "operation": {"kind": "generate", "num_images": 8},
                "model": {"id": str(tiny_model)},
                "output": s3_root,
                "steps": 2,
                "shard_size": 2,
                "execution": {"workers": 1, "device": "cpu"},
            }
        )
    )
    env = {**os.environ, "PREFECT_API_URL": prefect_server, "TMPDIR": private_tmp}
    proc = subprocess.Popen(
        [*AUGFLOW, "run", str(req)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 300
        while not hold.wait_holding(0.5):
            assert proc.poll() is None, proc.communicate()[1].decode()[-3000:]
            assert time.monotonic() < deadline, "no commit marker was ever written"
        # The shard's data file is complete; its marker is in flight, held by the proxy.
        m = re.search(COMMIT, hold.seen[0])
        assert m
        storage = Storage(s3_root)
        layout = RunLayout(m["run"] + "0" * 48)  # keys only use the first 16 hex digits
        assert storage.exists(layout.data_file(m["sid"]))
        assert not storage.exists(layout.commit_marker(m["sid"]))
        tree = {p: s for p, s in ray_reaper._tree([proc.pid]).items() if p != proc.pid}
        assert len(tree) >= 5, tree  # gcs, raylet, agents, workers, the guard
        os.kill(proc.pid, signal.SIGKILL)  # the driver only, as the OOM killer would
        proc.wait(timeout=30)
        # Everything the run started is gone within seconds, the guard included.
        assert _wait_gone(tree, timeout=15) < 15
    finally:
        hold.release()
        if proc.poll() is None:
            proc.kill()
    assert not storage.exists(layout.commit_marker(m["sid"]))  # the held marker never landed

    rerun = subprocess.run(
        [*AUGFLOW, "run", str(req)], env=env, capture_output=True, text=True, timeout=600
    )
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    counts = re.search(r"(\d+) shards computed, (\d+) reused", rerun.stderr)
    assert counts, rerun.stderr[-2000:]
    assert int(counts[1]) >= 1 and int(counts[1]) + int(counts[2]) == 4
    entry = assert_one_version(storage, "driver-killed", 8)
    state = shard_state(storage, RunLayout(entry.request_hash), m["sid"])
    assert state.committed and state.generation == 0


_DRIVER = """
import os, sys, time
from augflow.tasks.ray_pool import ensure_ray
ensure_ray()
print("ready", flush=True)
time.sleep(600)
"""


def test_the_next_start_reaps_what_a_killed_run_and_its_guard_left(
    tmp_path: Path, private_tmp: str
) -> None:
    env = {**os.environ, "TMPDIR": private_tmp}
    proc = subprocess.Popen(
        [sys.executable, "-c", _DRIVER], env=env, stdout=subprocess.PIPE, start_new_session=True
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == b"ready"
        time.sleep(2)  # the run is under way
        tree = {p: s for p, s in ray_reaper._tree([proc.pid]).items() if p != proc.pid}
        guards = [
            p
            for p in tree
            if b"augflow.tasks.ray_reaper" in Path(f"/proc/{p}/cmdline").read_bytes()
        ]
        assert len(guards) == 1
        # Everything dies at once (kill -9 of the whole lot), the guard first: nobody cleans up.
        os.kill(guards[0], signal.SIGKILL)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    time.sleep(3)
    left = _alive(tree)
    # The next augflow start (ensure_ray calls this before ray.init) kills what is left.
    reap = subprocess.run(
        [
            sys.executable,
            "-c",
            "from augflow.tasks import ray_reaper as r; print(r.reap_orphans())",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert reap.returncode == 0, reap.stderr[-2000:]
    killed = int(reap.stdout.strip())
    # Ray's dashboard and runtime-env agents outlive their raylet by a minute or more on their
    # own; what is left 3 s after the kill is what the reaper must end.
    assert left and 1 <= killed <= len(left), (left, killed)
    _wait_gone(tree, timeout=10)
    assert list(Path(private_tmp).glob("augflow-ray-guard-*/*.json")) == []
