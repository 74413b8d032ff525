"""The console script's quick exit (flows/process_exit.py): what a normal exit guarantees still
happens — exit codes, flushed output, joined non-daemon threads, atexit handlers."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from augflow.flows.process_exit import exit_code

_CHILD = """
import atexit, sys, threading, time
from pathlib import Path
from augflow.flows.process_exit import exit_now

d = Path(sys.argv[1])
atexit.register(lambda: (d / "atexit").write_text("ran"))

def slow():
    time.sleep(0.5)
    (d / "thread").write_text("done")

threading.Thread(target=slow).start()  # not a daemon: a normal exit waits for it
sys.stdout.write("unflushed tail")      # no newline: still in the buffer
exit_now(eval(sys.argv[2]))
"""


@pytest.mark.parametrize(("code", "status"), [("None", 0), ("0", 0), ("3", 3), ("'bad'", 1)])
def test_exit_now_keeps_what_a_normal_exit_guarantees(
    tmp_path: Path, code: str, status: int
) -> None:
    proc = subprocess.run(
        [sys.executable, "-c", _CHILD, str(tmp_path), code],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == status, proc.stderr
    assert proc.stdout == "unflushed tail"
    assert (tmp_path / "thread").read_text() == "done"
    assert (tmp_path / "atexit").read_text() == "ran"
    if status == 1:
        assert proc.stderr.strip().endswith("bad")  # sys.exit("bad") prints its message


def test_exit_code_matches_sys_exit() -> None:
    assert [exit_code(c) for c in (None, 0, 2, 3)] == [0, 0, 2, 3]


def test_the_console_script_exits_with_the_commands_status(tmp_path: Path) -> None:
    exe = Path(sys.executable).with_name("augflow")
    version = subprocess.run([str(exe), "--version"], capture_output=True, text=True, timeout=120)
    assert version.returncode == 0 and version.stdout.strip(), version.stderr
    missing = subprocess.run(
        [str(exe), "plan", str(tmp_path / "nope.yaml")], capture_output=True, text=True, timeout=120
    )
    assert missing.returncode == 2, missing.stderr  # a bad request: exit 2, message kept
    assert "nope.yaml" in missing.stderr
