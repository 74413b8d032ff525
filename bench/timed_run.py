"""``augflow run`` exactly as the console script runs it, plus a timeline written at the end:

    python -m bench.timed_run TIMELINE.json run REQUEST.yaml --output ROOT

The console script is ``augflow.flows.cli:console_main``; this calls the same ``app`` with the
same arguments in a fresh interpreter, writes when the process started (from /proc, so the
interpreter's own start-up counts), when each actor started and was ready, when the first
micro-batch came off the device, when each shard's result reached the flow, and when the CLI
returned (the version is registered by then), and ends the process as the console script does
(``exit_now``).
The caller times the whole process, exit included.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any


def process_start_time() -> float:
    """This process's start as a Unix time: /proc/self/stat's starttime (clock ticks since boot)
    plus the boot time. The boot time comes from /proc/uptime (10 ms resolution), not from
    /proc/stat's ``btime``, which is whole seconds: that rounding put every "from process start"
    time up to 1 s late (0.6 s on the machine of run 11)."""
    ticks = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])
    uptime = float(Path("/proc/uptime").read_text().split()[0])
    boot = time.time() - uptime
    return boot + ticks / os.sysconf("SC_CLK_TCK")


def main() -> None:
    out, args = Path(sys.argv[1]), sys.argv[2:]
    started = process_start_time()
    main_at = time.time()
    from augflow.flows.cli import app
    from augflow.schemas.records import ShardResult
    from augflow.tasks import progress

    events: list[tuple[float, int, str]] = []

    def on_event(event: progress.Event) -> None:
        if isinstance(event, ShardResult):
            events.append((time.time(), event.num_rows + event.num_quarantined, event.status))

    code = 0
    try:
        with progress.listening(on_event):
            app(args, standalone_mode=False)
    except SystemExit as exc:  # typer.Exit in standalone_mode=False surfaces as a code
        code = int(exc.code or 0)
    returned_at = time.time()
    from augflow.tasks import execute

    phases = _flow_phases()

    timeline: dict[str, Any] = {
        "process_start": started,
        "main_at": main_at,
        "cli_returned_at": returned_at,
        "exit_code": code,
        "events": events,
        "pool": execute.last_pool_stats,
        "phases": phases,
    }
    out.write_text(json.dumps(timeline))
    from augflow.flows.process_exit import exit_now

    exit_now(code)  # as the console script ends


def _flow_phases() -> dict[str, Any]:
    """Start and end (Unix time) of the last flow run and each of its task runs, read back from
    the Prefect API while its server still runs; empty if that fails."""
    try:
        from prefect.client.orchestration import get_client
        from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
        from prefect.client.schemas.sorting import FlowRunSort

        with get_client(sync_client=True) as client:
            (run,) = client.read_flow_runs(sort=FlowRunSort.START_TIME_DESC, limit=1)
            tasks = client.read_task_runs(
                flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[run.id]))
            )

        def span(obj: Any) -> list[float | None]:
            return [
                obj.start_time.timestamp() if obj.start_time else None,
                obj.end_time.timestamp() if obj.end_time else None,
            ]

        return {"flow": span(run), **{t.name: span(t) for t in tasks}}
    except Exception as exc:  # a timeline without phases is still a timeline
        return {"error": f"{type(exc).__name__}: {exc}"}


if __name__ == "__main__":
    main()
