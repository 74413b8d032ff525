"""No orphans: a local Ray's processes die with the driver that started them.

When a driver that started a local Ray (``ray.init()`` without an address) is SIGKILLed, Ray's
GCS server and raylet follow it (Ray ties them to the driver), but the raylet's dashboard and
runtime-env agents only notice a minute later or never (they first try to report to the GCS that
is already gone), and keep ~190 MB. Two mechanisms close that gap (Linux; elsewhere no-ops):

* :func:`guard_local_ray` starts a small watchdog process in its own session right after the
  driver started Ray. The watchdog holds the read end of a pipe whose write end only the driver
  holds, so however the driver ends (exit, crash, SIGKILL, OOM kill) the watchdog reads EOF at
  once. Meanwhile it tracks Ray's process tree (each process by pid *and* start time, so a reused
  pid is never mistaken for one of ours) and, at EOF, SIGKILLs whatever of it is still alive.
* The watchdog also records that tree under :data:`STATE_DIR`. If the watchdog itself was killed
  too (``kill -9`` of everything), :func:`reap_orphans`, called before the next local Ray starts,
  kills what such a record lists once both its driver and its watchdog are gone.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import select
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

STATE_DIR = Path(tempfile.gettempdir()) / f"augflow-ray-guard-{os.getuid()}"
#: how often the watchdog refreshes the tree it guards
REFRESH_S = 1.0
_PROC = Path("/proc")
# Kept for the life of the driver: dropping the Popen would close the pipe and end the guard.
_watchdogs: list[subprocess.Popen[bytes]] = []


# --- /proc ---------------------------------------------------------------------------------------


def _stat(pid: int) -> tuple[int, int] | None:
    """``(ppid, start time)`` of a live process, None when it is gone."""
    try:
        raw = (_PROC / str(pid) / "stat").read_text()
    except (OSError, ValueError):
        return None
    fields = raw[raw.rindex(")") + 2 :].split()  # the name in (...) may hold spaces
    if fields[0] == "Z":
        return None  # a zombie is dead; only its parent's wait() is missing
    return int(fields[1]), int(fields[19])


def _children_map() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for entry in _PROC.iterdir():
        if entry.name.isdigit():
            st = _stat(int(entry.name))
            if st is not None:
                kids.setdefault(st[0], []).append(int(entry.name))
    return kids


def _tree(roots: list[int]) -> dict[int, int]:
    """Every live process in the trees under ``roots``, by pid, with its start time."""
    kids = _children_map()
    out: dict[int, int] = {}
    todo = list(roots)
    while todo:
        pid = todo.pop()
        st = _stat(pid)
        if st is None or pid in out:
            continue
        out[pid] = st[1]
        todo.extend(kids.get(pid, []))
    return out


def _alive(pid: int, start: int) -> bool:
    st = _stat(pid)
    return st is not None and st[1] == start


def _kill(tracked: dict[int, int], grace_s: float = 5.0) -> int:
    """SIGKILL every tracked process still alive (same pid and start time); wait for them."""
    killed = 0
    for pid, start in tracked.items():
        if pid != os.getpid() and _alive(pid, start):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
                killed += 1
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline and any(_alive(p, s) for p, s in tracked.items()):
        time.sleep(0.05)
    return killed


# --- the driver side -----------------------------------------------------------------------------


def ray_process_pids() -> list[int]:
    """Pids of the Ray processes this driver started (GCS, raylet, monitors, ...)."""
    try:
        import ray._private.worker as ray_worker

        node = ray_worker._global_node
        procs: dict[str, list[Any]] = getattr(node, "all_processes", None) or {}
        return [int(info.process.pid) for infos in procs.values() for info in infos]
    except Exception:  # private API: a Ray that moved it leaves the guard without roots
        return []


def guard_local_ray() -> bool:
    """Start the watchdog for the local Ray this process just started. True when one runs."""
    if not _PROC.is_dir():
        return False
    roots = ray_process_pids()
    if not roots:
        log.info("ray guard: no local Ray processes found to guard")
        return False
    me = _stat(os.getpid())
    STATE_DIR.mkdir(parents=True, exist_ok=True)
    watchdog = subprocess.Popen(
        [sys.executable, "-m", "augflow.tasks.ray_reaper"],
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # a killpg of the driver's group must not take the guard along
        close_fds=True,
    )
    assert watchdog.stdin is not None
    # A first record right away, in case the watchdog is killed before it writes its own.
    guard = _stat(watchdog.pid)
    _save(
        _record(os.getpid(), me[1] if me else 0, watchdog.pid),
        os.getpid(),
        me[1] if me else 0,
        (watchdog.pid, guard[1] if guard else 0),
        _tree(roots),
    )
    hello = {"driver": os.getpid(), "driver_start": me[1] if me else 0, "roots": roots}
    watchdog.stdin.write((json.dumps(hello) + "\n").encode())
    watchdog.stdin.flush()
    _watchdogs.append(watchdog)
    return True


def reap_orphans() -> int:
    """Kill what dead drivers' local Rays left when their watchdogs died too. Returns how many
    processes were killed; never raises."""
    if not STATE_DIR.is_dir():
        return 0
    killed = 0
    for record in STATE_DIR.glob("*.json"):
        try:
            state = json.loads(record.read_text())
            if _alive(state["driver"], state["driver_start"]) or _alive(
                state["watchdog"], state["watchdog_start"]
            ):
                continue
            tracked = {int(p): int(s) for p, s in state["tracked"].items()}
            killed += _kill(tracked)
            record.unlink(missing_ok=True)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.info("ray guard: skipping record %s (%s)", record, exc)
    if killed:
        log.warning("reaped %d processes a killed run's local Ray left behind", killed)
    return killed


# --- the watchdog --------------------------------------------------------------------------------


def _watch() -> None:
    hello = json.loads(sys.stdin.buffer.readline())
    driver, driver_start, roots = hello["driver"], hello["driver_start"], hello["roots"]
    STATE_DIR.mkdir(parents=True, exist_ok=True)  # however the watchdog was started
    st = _stat(os.getpid())
    me = (os.getpid(), st[1] if st else 0)
    record = _record(driver, driver_start, os.getpid())
    tracked: dict[int, int] = {}
    saved: dict[int, int] | None = None
    fd = sys.stdin.buffer.fileno()
    while True:
        tracked = {p: s for p, s in tracked.items() if _alive(p, s)} | _tree(roots)
        if tracked != saved:
            _save(record, driver, driver_start, me, tracked)
            saved = dict(tracked)
        ready, _, _ = select.select([fd], [], [], REFRESH_S)
        if ready and not os.read(fd, 4096):
            break  # EOF: the driver is gone, however it ended
        if not tracked and not _alive(driver, driver_start):
            break
        if not tracked:
            # Ray was shut down while the driver lives on; a later ray.init() has its own guard.
            record.unlink(missing_ok=True)
            return
    tracked |= _tree(roots)
    _kill(tracked)
    record.unlink(missing_ok=True)


def _record(driver: int, driver_start: int, watchdog: int) -> Path:
    return STATE_DIR / f"{driver}-{driver_start}-{watchdog}.json"


def _save(
    record: Path, driver: int, driver_start: int, watchdog: tuple[int, int], tracked: dict
) -> None:
    state = {
        "driver": driver,
        "driver_start": driver_start,
        "watchdog": watchdog[0],
        "watchdog_start": watchdog[1],
        "tracked": {str(p): s for p, s in tracked.items()},
    }
    tmp = record.with_suffix(f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(state))
    os.replace(tmp, record)


if __name__ == "__main__":
    _watch()
