"""Ending the ``augflow`` process without Python's slow finalisation.

After a run the interpreter holds torch, Ray, Prefect, Great Expectations and pandas; tearing
their modules down object by object took ~1.9 s of a 16-image run's ~13 s here (measured with
py-spy: the main thread busy after the last exit handler). Nothing in that teardown is ours to
wait for. :func:`exit_now` does what a normal exit does that matters — waits for non-daemon
threads, runs the ``atexit`` handlers (Ray's and Prefect's shutdowns, the ephemeral server's
stop, logging's flush, ``weakref.finalize`` callbacks), flushes stdout and stderr — then ends the
process with ``os._exit``.

Only for the console script's own process (:func:`augflow.flows.cli.console_main`): code that
calls the CLI in-process (tests, notebooks) gets a normal return.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import sys
import threading


def exit_code(code: object) -> int:
    """The status ``sys.exit(code)`` would give: None → 0, an int as is, anything else printed to
    stderr → 1."""
    if code is None:
        return 0
    if isinstance(code, int):
        return code
    print(code, file=sys.stderr)
    return 1


def exit_now(code: object = 0) -> None:
    """End the process as ``sys.exit(code)`` would, minus module teardown."""
    status = exit_code(code)
    main = threading.main_thread()
    for thread in threading.enumerate():
        # what the interpreter joins before its exit handlers: work still going must finish
        if thread is not main and not thread.daemon and thread is not threading.current_thread():
            thread.join()
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        # closed, or a broken pipe: nothing left to save
        with contextlib.suppress(OSError, ValueError):
            stream.flush()
    os._exit(status)
