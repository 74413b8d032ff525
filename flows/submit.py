"""Submit a request to a deployment (``augflow submit``): one flow run per request.

The idempotency key derives from the request hash and the output root, so submitting the same
request twice returns the run the first submission started instead of starting another.
"""

from __future__ import annotations

import time
import uuid

from prefect.client.orchestration import get_client
from prefect.client.schemas.objects import FlowRun
from prefect.deployments import run_deployment
from prefect.settings import PREFECT_UI_URL

from augflow.schemas.records import derive_id
from augflow.schemas.request import AugmentRequest
from augflow.tasks.storage import normalize_uri

DEFAULT_DEPLOYMENT = "augment/on-demand"


def idempotency_key(request: AugmentRequest) -> str:
    return (
        f"augflow-{request.request_hash[:32]}-{derive_id(normalize_uri(request.output), length=12)}"
    )


def submit(
    request: AugmentRequest, deployment: str = DEFAULT_DEPLOYMENT, force: bool = False
) -> FlowRun:
    """Create (or find) the flow run for ``request``; returns at once without waiting."""
    key = idempotency_key(request)
    if force:  # a deliberate re-submission, e.g. after the inputs changed
        key = f"{key}-{uuid.uuid4().hex[:8]}"
    # Prefect types run_deployment as `FlowRun | Coroutine` (async_dispatch); sync callers get a FlowRun.
    return run_deployment(  # type: ignore[return-value]
        deployment,
        parameters={"request": request.model_dump(mode="json")},
        idempotency_key=key,
        timeout=0,
        tags=["augflow", f"dataset:{request.dataset}"],
    )


def run_url(run: FlowRun) -> str | None:
    ui = PREFECT_UI_URL.value()
    return f"{ui.rstrip('/')}/runs/flow-run/{run.id}" if ui else None


def wait(run: FlowRun, timeout: float | None = None, poll: float = 2.0) -> FlowRun:
    """Follow a flow run until it reaches a final state (or ``timeout`` seconds pass)."""
    deadline = None if timeout is None else time.monotonic() + timeout
    with get_client(sync_client=True) as client:
        while True:
            current = client.read_flow_run(run.id)
            if current.state is not None and current.state.is_final():
                return current
            if deadline is not None and time.monotonic() > deadline:
                return current
            time.sleep(poll)
