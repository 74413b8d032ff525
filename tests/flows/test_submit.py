"""Submitting requests to a deployment on a real Prefect server: one flow run per request.

No worker runs here, so submitted runs stay scheduled; tests/flows/test_deployments.py runs them
end to end with a worker."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import pytest

from augflow.schemas import parse_request


def _request(output: str, **over: Any):
    body: dict[str, Any] = {
        "dataset": "submitted",
        "operation": {"kind": "generate", "num_images": 2},
        "model": {"id": "m"},
        "output": output,
    }
    body.update(over)
    return parse_request(body)


def test_idempotency_key_follows_the_request_and_the_output_root(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from augflow.flows.submit import idempotency_key

    monkeypatch.chdir(tmp_path)
    key = idempotency_key(_request(str(tmp_path / "out")))
    assert key.startswith("augflow-")
    # The same root spelled differently is the same submission...
    assert idempotency_key(_request("out")) == key
    assert idempotency_key(_request(f"file://{tmp_path}/out")) == key
    # ...and how the work runs does not matter, what it makes and where it lands does.
    assert idempotency_key(_request("out", execution={"workers": 3})) == key
    assert idempotency_key(_request("other")) != key
    assert idempotency_key(_request("out", seed=1)) != key


def test_run_url_needs_a_ui_url() -> None:
    from prefect.settings import PREFECT_API_URL, PREFECT_UI_URL, temporary_settings

    from augflow.flows.submit import run_url

    class Run:
        id = uuid.UUID(int=7)

    with temporary_settings({PREFECT_UI_URL: "http://127.0.0.1:4200/"}):
        assert run_url(Run()) == f"http://127.0.0.1:4200/runs/flow-run/{Run.id}"
    with temporary_settings({PREFECT_UI_URL: None, PREFECT_API_URL: None}):
        assert run_url(Run()) is None


@pytest.fixture(scope="module")
def deployment(prefect_server: str) -> str:
    from prefect import get_client

    flow_name = f"augment-submit-test-{uuid.uuid4().hex[:6]}"
    with get_client(sync_client=True) as client:
        flow_id = client.create_flow_from_name(flow_name)
        client.create_deployment(flow_id=flow_id, name="on-demand")
    return f"{flow_name}/on-demand"


@pytest.mark.slow
def test_submitting_twice_gives_one_run_and_force_gives_another(
    deployment: str, tmp_path: Path
) -> None:
    from augflow.flows.submit import idempotency_key, submit

    request = _request(str(tmp_path / "out"))
    first = submit(request, deployment)
    assert first.parameters == {"request": request.model_dump(mode="json")}
    assert set(first.tags) >= {"augflow", "dataset:submitted"}
    assert first.idempotency_key == idempotency_key(request)
    assert submit(request, deployment).id == first.id
    forced = submit(request, deployment, force=True)
    assert forced.id != first.id and forced.idempotency_key.startswith(idempotency_key(request))
    elsewhere = submit(_request(str(tmp_path / "elsewhere")), deployment)
    assert elsewhere.id not in (first.id, forced.id)


@pytest.mark.slow
def test_wait_returns_at_the_timeout_or_at_a_final_state(deployment: str, tmp_path: Path) -> None:
    import time

    from prefect import get_client
    from prefect.states import Completed

    from augflow.flows.submit import submit, wait

    run = submit(_request(str(tmp_path / "out"), seed=42), deployment)
    started = time.monotonic()
    pending = wait(run, timeout=0.5, poll=0.1)
    assert time.monotonic() - started < 10
    assert pending.id == run.id and not pending.state.is_final()

    with get_client(sync_client=True) as client:
        client.set_flow_run_state(run.id, Completed(), force=True)
    done = wait(run, timeout=30, poll=0.1)
    assert done.state is not None and done.state.is_completed()
