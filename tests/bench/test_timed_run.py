"""bench/timed_run.py's clock: a process's start time, from which every "first image" and "to
result" time of the end-to-end benchmark is counted."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_process_start_is_when_the_process_was_launched() -> None:
    code = "from bench.timed_run import process_start_time; print(repr(process_start_time()))"
    before = time.time()
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT
    )
    after = time.time()
    started = float(out.stdout.strip())
    # within one clock tick (10 ms) plus the kernel's bookkeeping of when we launched it; a boot
    # time rounded to whole seconds (/proc/stat btime) would put it up to 1 s early
    assert before - 0.03 <= started <= after
