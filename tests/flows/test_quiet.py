"""Keeping the terminal for augflow (flows/quiet.py): log file names and their rotation, and fds 1
and 2 pointed at the log, checked in child processes whose fds are real (pytest captures ours).
A whole quiet `augflow run` is tests/flows/test_cli.py."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from augflow.flows import quiet
from augflow.schemas.settings import reload_settings


@pytest.fixture
def log_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "logs"
    monkeypatch.setenv("AUGFLOW_LOG_DIR", str(folder))
    reload_settings()
    yield folder
    monkeypatch.undo()
    reload_settings()


def test_log_path_is_in_the_log_dir_and_names_the_run(log_dir: Path) -> None:
    path = quiet.new_log_path("cats v2/../../etc")
    assert path.parent == log_dir and log_dir.is_dir()
    # the label cannot leave the folder or hide: unsafe characters become dashes
    assert path.name.startswith("run-") and path.name.endswith(
        f"-cats-v2-..-..-etc-{os.getpid()}.log"
    )
    assert not path.exists()  # named, not created: the run opens it
    assert len(quiet.new_log_path("x" * 500).name) < 100


def test_old_logs_beyond_the_newest_are_removed(log_dir: Path) -> None:
    log_dir.mkdir(parents=True)
    now = time.time()
    old = []
    for i in range(quiet.KEEP_LOGS + 5):
        p = log_dir / f"run-old-{i:03d}.log"
        p.write_text("x")
        os.utime(p, (now - 1000 + i, now - 1000 + i))  # i = 0 is the oldest
        old.append(p)
    other = log_dir / "notes.txt"
    other.write_text("not a run log")
    new = quiet.new_log_path("cats")
    new.write_text("y")
    kept = sorted(log_dir.glob("run-*.log"))
    assert len(kept) == quiet.KEEP_LOGS
    # the oldest went; the newest stayed, and so did a file that is not a run log
    assert not any(p.exists() for p in old[:6]) and all(p.exists() for p in old[6:])
    assert other.exists()


def _child(body: str, log: Path) -> subprocess.CompletedProcess[str]:
    code = textwrap.dedent(
        f"""
        import os, subprocess, sys
        from pathlib import Path
        from augflow.flows.quiet import third_party_output_to
        log = Path({str(log)!r})
        """
    ) + textwrap.dedent(body)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)


def test_third_party_output_goes_to_the_log_and_ours_to_the_terminal(tmp_path: Path) -> None:
    log = tmp_path / "run.log"
    proc = _child(
        """
        with third_party_output_to(log) as (out, err):
            print("prefect says hi")
            print("ray warns", file=sys.stderr)
            os.write(2, b"raw fd 2 from C++\\n")
            subprocess.run(["sh", "-c", "echo child process; echo child err >&2"])
            print("augflow line", file=out)
            print("augflow phase", file=err)
        print("after the block")
        """,
        log,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == ["augflow line", "after the block"]
    assert proc.stderr.splitlines() == ["augflow phase"]
    logged = log.read_text().splitlines()
    assert sorted(logged) == sorted(
        ["prefect says hi", "ray warns", "raw fd 2 from C++", "child process", "child err"]
    )
    assert oct(log.stat().st_mode & 0o777) == oct(0o600)  # logs may hold paths and URLs


def test_without_restore_exit_time_output_still_goes_to_the_log(tmp_path: Path) -> None:
    log = tmp_path / "run.log"
    log.write_text("earlier run\n")
    proc = _child(
        """
        import atexit
        atexit.register(lambda: print("shutting ray down"))
        with third_party_output_to(log, restore=False) as (out, err):
            print("summary", file=err)
        print("exit handler territory")
        """,
        log,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "" and proc.stderr == "summary\n"
    # appended, never truncated
    assert log.read_text().splitlines() == [
        "earlier run",
        "exit handler territory",
        "shutting ray down",
    ]


def test_replaced_streams_are_left_alone(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    # capsys has replaced sys.stdout/sys.stderr (as an embedding application may): nothing is
    # redirected, nothing is opened
    log = tmp_path / "never.log"
    with quiet.third_party_output_to(log) as (out, err):
        assert out is sys.stdout and err is sys.stderr
    assert not log.exists()
