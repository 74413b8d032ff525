"""Start-up of a run: the slow parts start at once and side by side, not one after another.

A local ``augflow run`` pays for Ray (its processes), an actor (a process that imports torch and
diffusers and loads the model), Prefect (its import and, with no ``PREFECT_API_URL``, a server
process) and Great Expectations (an import of seconds). None of them needs another to start, so
:func:`start_early` — called by the CLI before it imports Prefect — starts Ray, the actors and the
first shards in this thread (Ray wants the main thread for its signal handlers), Prefect's server
in another, and :func:`warm_up_validation` imports GX in the background once Prefect is up. The
flow then attaches to the running pool (:func:`augflow.tasks.execute.start_early`).

Nothing here imports Prefect at module level: the point is to start Ray before Prefect's import.
"""

from __future__ import annotations

import atexit
import logging
import os
import threading

from augflow.schemas.request import AugmentRequest

log = logging.getLogger(__name__)

_gx_started = threading.Event()


def start_early(request: AugmentRequest) -> None:
    """Start everything ``augflow run`` will need for ``request``; returns when Prefect is up and
    the actors are starting (their model loads and first shards go on in their processes).
    Call it after :func:`augflow.tasks.preflight.preflight` passed (the CLI does)."""
    from augflow.tasks import execute  # Ray, but neither Prefect nor torch
    from augflow.tasks.ray_pool import shutdown_quickly

    # at exit, before Ray's own (slower) shutdown: the run is over, nothing is left to wait for
    atexit.register(shutdown_quickly)
    prefect = threading.Thread(target=_start_prefect, name="augflow-prefect-start", daemon=True)
    prefect.start()
    # the CLI's progress display attaches once the flow runs: the channel must not wait for it
    execute.start_early(request, checked=True, listeners_later=True)
    # The flow's first API call would start a second ephemeral server if this one were not up.
    prefect.join()
    warm_up_validation()


def warm_up_validation() -> None:
    """Import Great Expectations in a background thread (once per process), so the quality gate
    does not pay for the import after the last shard. The driver idles while actors compute."""
    if _gx_started.is_set():
        return
    _gx_started.set()

    def load() -> None:
        # tasks/validate.py sets the same before its own import: GX never phones home.
        os.environ["GX_ANALYTICS_ENABLED"] = "false"
        try:
            import great_expectations  # noqa: F401
        except Exception:  # the gate imports it again and reports a real problem there
            log.debug("background import of great_expectations failed", exc_info=True)

    threading.Thread(target=load, name="augflow-gx-import", daemon=True).start()


def _start_prefect() -> None:
    """Reach the Prefect API once: with no PREFECT_API_URL this starts the ephemeral server."""
    try:
        from prefect.client.orchestration import get_client

        with get_client(sync_client=True) as client:
            client.hello()
    except Exception:  # the flow reaches the API again and reports a real problem there
        log.debug("early Prefect start failed", exc_info=True)
