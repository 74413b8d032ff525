"""Keep the terminal for augflow: everything else a run prints goes to a log file.

Prefect, Ray (its C++ core writes to the process's stderr directly, and its workers' output is
forwarded to the driver's), Great Expectations and Python warnings all write to file descriptors
1 and 2. :func:`third_party_output_to` points both at a log file for the duration of a run and
hands back streams on the original terminal for augflow's own display and summary. Processes
started meanwhile (Ray's raylet and GCS, Prefect's temporary server) inherit the log as well.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import TextIO

from augflow.schemas.settings import settings

KEEP_LOGS = 50


def new_log_path(label: str) -> Path:
    """``<AUGFLOW_LOG_DIR>/run-<UTC time>-<label>-<pid>.log``; old logs beyond the newest
    :data:`KEEP_LOGS` are removed."""
    folder = Path(settings().log_dir).expanduser()
    folder.mkdir(parents=True, exist_ok=True)
    logs = sorted(folder.glob("run-*.log"), key=lambda p: p.stat().st_mtime)
    for old in logs[: max(0, len(logs) - KEEP_LOGS + 1)]:
        with contextlib.suppress(OSError):
            old.unlink()
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    safe = "".join(c if c.isalnum() or c in "._-" else "-" for c in label)[:60]
    return folder / f"run-{stamp}-{safe}-{os.getpid()}.log"


def _real_fd(stream: TextIO, fd: int) -> bool:
    try:
        return stream.fileno() == fd
    except (AttributeError, OSError, ValueError):
        return False  # replaced by a test runner or an embedding application: leave it alone


@contextlib.contextmanager
def third_party_output_to(log_path: Path, restore: bool = True) -> Iterator[tuple[TextIO, TextIO]]:
    """Redirect fds 1 and 2 to ``log_path`` while the block runs; yields ``(out, err)`` streams
    that still reach the original stdout and stderr.

    ``restore=False`` leaves fds 1 and 2 on the log after the block, for a process that exits
    next: Prefect and Ray print from exit handlers (stopping the temporary server, shutting Ray
    down). When ``sys.stdout``/``sys.stderr`` are not the process's own fds 1 and 2 (a test
    runner capturing them), nothing is redirected and the streams themselves are yielded.
    """
    if not (_real_fd(sys.stdout, 1) and _real_fd(sys.stderr, 2)):
        yield sys.stdout, sys.stderr
        return
    sys.stdout.flush()
    sys.stderr.flush()
    saved = {fd: os.dup(fd) for fd in (1, 2)}
    log_fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    enc_out, enc_err = sys.stdout.encoding, sys.stderr.encoding
    out = os.fdopen(os.dup(saved[1]), "w", buffering=1, encoding=enc_out, errors="replace")
    err = os.fdopen(os.dup(saved[2]), "w", buffering=1, encoding=enc_err, errors="replace")
    os.dup2(log_fd, 1)
    os.dup2(log_fd, 2)
    os.close(log_fd)
    try:
        yield out, err
    finally:
        with contextlib.suppress(Exception):
            sys.stdout.flush()
            sys.stderr.flush()
        out.flush()
        err.flush()
        if restore:
            os.dup2(saved[1], 1)
            os.dup2(saved[2], 2)
            for fd in saved.values():
                os.close(fd)
            out.close()
            err.close()
