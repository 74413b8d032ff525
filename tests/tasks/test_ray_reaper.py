"""The orphan guard's own parts (tasks/ray_reaper.py) on real short-lived processes started here:
reading /proc, walking a process tree, killing only what is still the same process, reaping the
records a dead driver left, and the watchdog killing its tree when its driver's pipe closes.
(The end-to-end SIGKILL of a real Ray driver is tests/faults/test_driver_faults.py.)"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from augflow.tasks import ray_reaper as R

pytestmark = pytest.mark.skipif(not Path("/proc").is_dir(), reason="the guard reads Linux /proc")


def _wait_for(cond, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.05)
    return cond()


@pytest.fixture
def procs() -> Iterator[list[subprocess.Popen]]:
    """Processes a test starts, each in its own session; whatever a test left alive (children
    included) is killed by process group and waited for."""
    started: list[subprocess.Popen] = []
    yield started
    for p in started:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(p.pid, signal.SIGKILL)
        p.wait(timeout=10)


def _tree_of_three(procs: list[subprocess.Popen]) -> tuple[subprocess.Popen, list[int]]:
    """A shell with two sleeping children: the shape of a raylet with its agents."""
    shell = subprocess.Popen(
        ["sh", "-c", "sleep 60 & sleep 60 & echo ready; wait"],
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    procs.append(shell)
    assert shell.stdout is not None and shell.stdout.readline().strip() == "ready"
    assert _wait_for(lambda: len(R._children_map().get(shell.pid, [])) == 2)
    kids = sorted(R._children_map()[shell.pid])
    return shell, kids


def test_stat_reads_parent_and_start_time_and_a_finished_process_reads_none(procs) -> None:
    me = R._stat(os.getpid())
    assert me is not None and me[0] == os.getppid() and me[1] > 0
    child = subprocess.Popen(["sleep", "60"], start_new_session=True)
    procs.append(child)
    st = R._stat(child.pid)
    assert st is not None and st[0] == os.getpid() and st[1] >= me[1]
    child.kill()
    # dead but not yet waited for (a zombie) already counts as gone
    assert _wait_for(lambda: R._stat(child.pid) is None)
    child.wait()
    assert R._stat(child.pid) is None


def test_tree_finds_every_descendant_with_its_start_time(procs) -> None:
    shell, kids = _tree_of_three(procs)
    tree = R._tree([shell.pid])
    assert set(tree) == {shell.pid, *kids}
    assert all(R._alive(pid, start) for pid, start in tree.items())
    assert os.getpid() not in tree  # the parent of a root is not part of its tree
    assert R._tree([]) == {}


def test_alive_needs_the_same_start_time_so_a_reused_pid_is_not_ours(procs) -> None:
    child = subprocess.Popen(["sleep", "60"], start_new_session=True)
    procs.append(child)
    start = R._tree([child.pid])[child.pid]
    assert R._alive(child.pid, start)
    assert not R._alive(child.pid, start + 1)  # same pid, another process


def test_kill_ends_the_tracked_tree_but_spares_a_pid_with_another_start_time(procs) -> None:
    shell, _ = _tree_of_three(procs)
    bystander = subprocess.Popen(["sleep", "60"], start_new_session=True)
    procs.append(bystander)
    tracked = R._tree([shell.pid])
    stale = {bystander.pid: R._tree([bystander.pid])[bystander.pid] + 1}
    assert R._kill(tracked | stale, grace_s=5.0) == 3
    assert not any(R._alive(p, s) for p, s in tracked.items())
    assert bystander.poll() is None  # a recorded pid that is now someone else's: left alone
    # the guard never kills the process running it, even when its own pid is in the record
    me = R._stat(os.getpid())
    assert me is not None and R._kill({os.getpid(): me[1]}, grace_s=0.0) == 0


def _write_record(folder: Path, name: str, **state) -> Path:
    path = folder / f"{name}.json"
    path.write_text(json.dumps(state))
    return path


def test_reap_orphans_kills_what_a_dead_driver_and_watchdog_left(
    procs, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(R, "STATE_DIR", tmp_path)
    gone = subprocess.Popen(["true"])
    gone_start = R._tree([gone.pid]).get(gone.pid, 1)
    gone.wait()  # a driver and watchdog that no longer exist
    shell, _ = _tree_of_three(procs)
    tracked = {str(p): s for p, s in R._tree([shell.pid]).items()}
    orphan = _write_record(
        tmp_path, "orphan", driver=gone.pid, driver_start=gone_start,
        watchdog=gone.pid, watchdog_start=gone_start, tracked=tracked,
    )  # fmt: skip
    survivor = subprocess.Popen(["sleep", "60"], start_new_session=True)
    procs.append(survivor)
    me = R._stat(os.getpid())
    assert me is not None
    live = _write_record(
        tmp_path, "live", driver=os.getpid(), driver_start=me[1],
        watchdog=gone.pid, watchdog_start=gone_start,
        tracked={str(survivor.pid): R._tree([survivor.pid])[survivor.pid]},
    )  # fmt: skip
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")

    assert R.reap_orphans() == 3
    assert not orphan.exists()
    assert not any(R._alive(int(p), s) for p, s in tracked.items())
    # a driver that still runs keeps its Ray; a record that cannot be read is skipped, not fatal
    assert live.exists() and survivor.poll() is None
    assert broken.exists()
    assert R.reap_orphans() == 0


def test_reap_orphans_without_a_state_folder_does_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(R, "STATE_DIR", tmp_path / "never-made")
    assert R.reap_orphans() == 0
    assert not (tmp_path / "never-made").exists()


def _watchdog(state_dir: Path, roots: list[int]) -> subprocess.Popen:
    # TMPDIR moves the watchdog's STATE_DIR (under tempfile.gettempdir()) into the test's folder
    env = {**os.environ, "TMPDIR": str(state_dir)}
    (state_dir / f"augflow-ray-guard-{os.getuid()}").mkdir()  # guard_local_ray makes it first
    dog = subprocess.Popen(
        [sys.executable, "-m", "augflow.tasks.ray_reaper"],
        stdin=subprocess.PIPE,
        env=env,
        start_new_session=True,  # as guard_local_ray starts it
    )
    me = R._stat(os.getpid())
    assert dog.stdin is not None and me is not None
    hello = {"driver": os.getpid(), "driver_start": me[1], "roots": roots}
    dog.stdin.write((json.dumps(hello) + "\n").encode())
    dog.stdin.flush()
    return dog


def test_watchdog_records_the_tree_and_kills_it_when_the_driver_pipe_closes(
    procs, tmp_path: Path
) -> None:
    shell, _ = _tree_of_three(procs)
    tracked = R._tree([shell.pid])
    dog = _watchdog(tmp_path, [shell.pid])
    procs.append(dog)
    records = tmp_path / f"augflow-ray-guard-{os.getuid()}"

    def recorded() -> dict | None:
        found = list(records.glob("*.json")) if records.is_dir() else []
        return json.loads(found[0].read_text()) if found else None

    assert _wait_for(lambda: recorded() is not None and len(recorded()["tracked"]) == 3)
    state = recorded()
    assert state is not None
    assert (state["driver"], state["watchdog"]) == (os.getpid(), dog.pid)
    assert {int(p): s for p, s in state["tracked"].items()} == tracked
    assert all(R._alive(p, s) for p, s in tracked.items())  # guarding is not killing

    assert dog.stdin is not None
    dog.stdin.close()  # what the kernel does when the driver dies, however it dies
    assert dog.wait(timeout=15) == 0
    assert not any(R._alive(p, s) for p, s in tracked.items())
    assert not list(records.glob("*.json"))


def test_watchdog_stands_down_when_ray_stops_and_the_driver_lives_on(procs, tmp_path) -> None:
    short = subprocess.Popen(["sleep", "60"], start_new_session=True)
    procs.append(short)
    dog = _watchdog(tmp_path, [short.pid])
    procs.append(dog)
    records = tmp_path / f"augflow-ray-guard-{os.getuid()}"
    assert _wait_for(lambda: records.is_dir() and len(list(records.glob("*.json"))) == 1)
    short.kill()  # ray.shutdown(): the tree is gone, the driver carries on
    short.wait()
    assert dog.wait(timeout=15) == 0
    assert not list(records.glob("*.json"))


def test_guard_local_ray_starts_nothing_without_a_local_ray() -> None:
    # a fresh process (this one may share a Ray with other tests) that never called ray.init()
    code = (
        "from augflow.tasks import ray_reaper as R; "
        "print(R.ray_process_pids(), R.guard_local_ray(), len(R._watchdogs))"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["[]", "False", "0"]
