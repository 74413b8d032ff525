"""Start-up of a run: the slow parts start at once and side by side, not one after another.

A local ``augflow run`` pays for Ray (its processes), an actor (a process that imports torch and
diffusers and loads the model), Prefect (its import and, with no ``PREFECT_API_URL``, a server
process) and Great Expectations (an import of seconds). None of them needs another to start, so
:func:`start_early` — called by the CLI before it imports Prefect — starts Prefect's server
process (:mod:`augflow.flows.local_prefect`, when no ``PREFECT_API_URL`` is set), then Ray, the
actors and the first shards in this thread (Ray wants the main thread for its signal handlers),
imports Prefect's client in another while the server starts, and :func:`warm_up_validation`
imports GX in the background once Prefect is up. The flow then attaches to the running pool
(:func:`augflow.tasks.execute.start_early`).

Nothing here imports Prefect at module level: the point is to start Ray before Prefect's import.
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from augflow.schemas.errors import OrchestrationError
from augflow.schemas.request import AugmentRequest

if TYPE_CHECKING:
    from augflow.flows.local_prefect import LocalPrefectServer

log = logging.getLogger(__name__)

_gx_started = threading.Event()


def start_early(request: AugmentRequest) -> bool:
    """Start everything ``augflow run`` will need for ``request``; returns when Prefect is up and
    the actors are starting (their model loads and first shards go on in their processes), True
    when the run has a Prefect server of its own (no PREFECT_API_URL; see :func:`run_settings`).
    Call it after :func:`augflow.tasks.preflight.preflight` passed (the CLI does).
    OrchestrationError if the local Prefect server does not come up."""
    from augflow.flows import local_prefect
    from augflow.tasks import execute  # Ray, but neither Prefect nor torch

    # first, from the main thread: the server's process is the slowest to start, and the
    # kernel's parent-death signal that ends it with this process is tied to the starting thread
    server = local_prefect.start()
    # Registered before Prefect is imported, so it runs after Prefect's own exit handlers have
    # sent their last logs and events to the server; and before Ray's own (slower) shutdown.
    atexit.register(_shut_down, server)
    failure: list[BaseException] = []
    prefect = threading.Thread(
        target=_start_prefect, args=(server, failure), name="augflow-prefect-start", daemon=True
    )
    prefect.start()
    # the CLI's progress display attaches once the flow runs: the channel must not wait for it
    execute.start_early(request, checked=True, listeners_later=True)
    # The flow's first API call would start a second ephemeral server if this one were not up.
    prefect.join()
    if failure:
        raise failure[0]
    warm_up_validation()
    return server is not None


def _shut_down(server: LocalPrefectServer | None) -> None:
    """At exit the run is over and nothing is left to wait for: Ray's processes are killed
    (:func:`augflow.tasks.ray_pool.shutdown_quickly`) while the Prefect server stops."""
    from augflow.tasks.ray_pool import shutdown_quickly

    if server is not None:
        server.terminate()  # its graceful stop (~0.2 s) overlaps Ray's
    shutdown_quickly()
    if server is not None:
        server.stop()


@contextmanager
def run_settings(own_server: bool) -> Iterator[None]:
    """Prefect settings for the flow run of ``augflow run``. On a server of its own (started by
    :func:`start_early`) the run sends no heartbeats: they let a lasting server mark a crashed
    run (the on-demand deployment's zombie automation), but this server ends with the run, so
    nobody could read them; and Prefect's heartbeat thread sleeps in 1 s steps, so the flow
    waits up to 1 s for it at its end."""
    if not own_server:
        yield
        return
    from prefect.settings import temporary_settings

    with temporary_settings(updates={"flows.heartbeat_frequency": None}):
        yield


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


def _start_prefect(server: LocalPrefectServer | None, failure: list[BaseException]) -> None:
    """Import Prefect's client while ``server`` starts, then reach the API once (with neither
    ``server`` nor a PREFECT_API_URL, Prefect starts its own temporary server here). A server of
    ours that does not come up is recorded in ``failure``; other problems are reported by the
    flow, which reaches the API again."""
    try:
        from prefect.client.orchestration import get_client
    except Exception:
        log.debug("early Prefect import failed", exc_info=True)
        return
    if server is not None:
        try:
            server.wait_ready()
        except OrchestrationError as exc:
            failure.append(exc)
            return
    try:
        with get_client(sync_client=True) as client:
            client.hello()
    except Exception:
        log.debug("early Prefect start failed", exc_info=True)
