"""Faults in the workers: an actor SIGKILLed mid-shard, a shard that hangs, an actor that eats
memory until the kernel kills it. Each run must end with every row exactly once in exactly one
registered version (or, when the fault never clears, a clear failure and nothing registered)."""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from faults.checks import assert_one_version, generate_request
from faults.fault_models import add_tokens, claimed, make_fault_model

from augflow.schemas.errors import ExecutionError
from augflow.tasks import ray_reaper
from augflow.tasks.register import list_versions
from augflow.tasks.storage import Storage

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("prefect_server", "fault_ray")]


def _run_in_thread(request: Any) -> tuple[threading.Thread, dict[str, Any]]:
    from augflow.flows.augment import augment

    box: dict[str, Any] = {}

    def go() -> None:
        try:
            box["outcome"] = augment(request)
        except BaseException as exc:
            box["error"] = exc

    thread = threading.Thread(target=go)
    thread.start()
    return thread, box


def _join(thread: threading.Thread, timeout: float = 300) -> None:
    """Wait for a flow run in ``thread``; one still running after ``timeout`` (a healthy one
    takes under a minute) fails the test, and its shard actors are killed until it ends, so a
    hang costs one test, not every later one queued behind its actors on the shared Ray."""
    thread.join(timeout=timeout)
    if not thread.is_alive():
        return
    deadline = time.monotonic() + 120
    while thread.is_alive() and time.monotonic() < deadline:
        for pid in _our_actor_pids("ray::_ShardActor"):
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        thread.join(timeout=2)
    raise AssertionError(f"the flow run did not finish within {timeout:.0f} s")


def _our_actor_pids(title: str) -> list[int]:
    """Pids of *this* test session's Ray processes whose title starts with ``title`` (other Ray
    clusters on the machine are never touched)."""
    out = []
    for pid in ray_reaper._tree(ray_reaper.ray_process_pids()):
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if cmd.startswith(title):
            out.append(pid)
    return out


def _wait_for(predicate: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def test_an_actor_killed_mid_shard(tmp_path: Path) -> None:
    model = make_fault_model(tmp_path / "model", seconds=2.0)
    request = generate_request(
        model,
        str(tmp_path / "out"),
        "killed-actor",
        operation={"kind": "generate", "num_images": 8},
    )
    thread, box = _run_in_thread(request)
    try:
        # The actor's title reads `ray::_ShardActor.process` only while it runs a shard.
        (victim,) = _wait_for(
            lambda: _our_actor_pids("ray::_ShardActor.process"), 240, "a shard to start"
        )[:1]
        os.kill(victim, signal.SIGKILL)
    finally:
        _join(thread)
    assert "error" not in box, box.get("error")
    assert box["outcome"].status == "registered"
    assert not Path(f"/proc/{victim}").exists()
    assert_one_version(Storage(str(tmp_path / "out")), "killed-actor", 8)


def test_a_shard_that_hangs_once_times_out_and_is_retried(tmp_path: Path) -> None:
    tokens = add_tokens(tmp_path / "tokens", 1)
    model = make_fault_model(tmp_path / "model", mode="hang", token_dir=str(tokens))
    request = generate_request(
        model,
        str(tmp_path / "out"),
        "hung-once",
        operation={"kind": "generate", "num_images": 4},
        # long enough that a healthy shard on a loaded 2-core machine never reaches it
        execution={"workers": 1, "device": "cpu", "max_retries": 2, "shard_timeout_s": 15},
    )
    thread, box = _run_in_thread(request)
    _join(thread)
    assert "error" not in box, box.get("error")
    assert len(claimed(tokens)) == 1  # the first attempt really hung
    assert_one_version(Storage(str(tmp_path / "out")), "hung-once", 4)


def test_a_shard_that_always_hangs_fails_clearly_then_a_rerun_registers_once(
    tmp_path: Path,
) -> None:
    tokens = add_tokens(tmp_path / "tokens", 10)
    model = make_fault_model(tmp_path / "model", mode="hang", token_dir=str(tokens))
    out = Storage(str(tmp_path / "out"))

    def request(timeout_s: int) -> Any:
        return generate_request(
            model,
            out.root,
            "hung-always",
            operation={"kind": "generate", "num_images": 2},
            execution={
                "workers": 1,
                "device": "cpu",
                "max_retries": 1,
                "shard_timeout_s": timeout_s,
            },
        )

    start = time.monotonic()
    thread, box = _run_in_thread(request(5))
    _join(thread)
    error = box.get("error")
    assert isinstance(error, ExecutionError), box
    assert "timed out: no result after 5s (execution.shard_timeout_s)" in str(error)
    assert len(claimed(tokens)) == 2  # the attempt and its one retry, then it stopped
    assert time.monotonic() - start < 300
    assert list_versions(out, "hung-always") == []
    for token in tokens.iterdir():  # the fault clears
        token.unlink()
    # the same request (execution settings are not hashed), with room for a healthy shard on a
    # loaded machine
    assert request(120).request_hash == request(5).request_hash
    thread, box = _run_in_thread(request(120))
    _join(thread)
    assert "error" not in box, box.get("error")
    assert_one_version(out, "hung-always", 2)


MEMORY_CGROUPS = Path("/sys/fs/cgroup/memory")


def _memory_cgroup(limit: int) -> Path:
    """A cgroup-v1 memory group with ``limit`` bytes; skips where none can be made."""
    cgroup = MEMORY_CGROUPS / f"augflow-fault-{uuid.uuid4().hex[:8]}"
    try:
        cgroup.mkdir()
        (cgroup / "memory.limit_in_bytes").write_text(str(limit))
    except OSError as exc:
        pytest.skip(f"cannot create a memory cgroup here ({exc}); needs root and cgroup v1")
    return cgroup


def test_an_actor_over_its_memory_is_killed_by_the_kernel_and_the_shard_retried(
    tmp_path: Path,
) -> None:
    cgroup = _memory_cgroup(256 * 2**20)
    try:
        tokens = add_tokens(tmp_path / "tokens", 1)
        model = make_fault_model(
            tmp_path / "model", mode="hog", token_dir=str(tokens), cgroup=str(cgroup)
        )
        request = generate_request(
            model,
            str(tmp_path / "out"),
            "memory-hog",
            operation={"kind": "generate", "num_images": 4},
        )
        thread, box = _run_in_thread(request)
        _join(thread)
        assert "error" not in box, box.get("error")
        assert len(claimed(tokens)) == 1
        # The kernel's OOM killer, not a Python MemoryError, ended the hog.
        oom = dict(
            line.split() for line in (cgroup / "memory.oom_control").read_text().splitlines()
        )
        assert int(oom["oom_kill"]) == 1 and int((cgroup / "memory.failcnt").read_text()) > 0
        assert_one_version(Storage(str(tmp_path / "out")), "memory-hog", 4)
    finally:
        _wait_for(lambda: not (cgroup / "cgroup.procs").read_text().strip(), 30, "empty cgroup")
        cgroup.rmdir()
