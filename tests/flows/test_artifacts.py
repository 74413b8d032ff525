"""Run artifacts, published inside a flow run and read back from a real Prefect server."""

from __future__ import annotations

import json
from typing import Any
from uuid import UUID

import pytest

from augflow.schemas import parse_request
from augflow.schemas.records import Plan, ShardResult, ShardSpec

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("prefect_server")]


def _request(dataset: str = "cats.v2_x"):
    return parse_request(
        {
            "dataset": dataset,
            "operation": {"kind": "img2img", "variants": 2},
            "inputs": "/in",
            "model": {"id": "tiny-model"},
        }
    )


def _result(sid: str, status: str, rows: int, quarantined: int = 0) -> ShardResult:
    return ShardResult(
        shard_id=sid,
        data_file=f"runs/0123456789abcdef/shards/{sid}.parquet",
        quarantine_file=None,
        num_rows=rows,
        num_quarantined=quarantined,
        data_bytes=1000 + rows,
        seconds=0.12345,
        status=status,
    )


def _plan(request: Any) -> Plan:
    return Plan(
        dataset=request.dataset,
        request_hash=request.request_hash,
        version="v123",
        shards=(ShardSpec(shard_id="s1", index=0), ShardSpec(shard_id="s2", index=1)),
        num_rows=6,
    )


def _publish_in_a_flow(**kwargs: Any) -> dict[str, Any]:
    """Publish inside a flow run; return that run's artifacts by key, as the server has them."""
    from prefect import flow, get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    from augflow.flows.artifacts import publish_artifacts

    @flow(name="artifacts-test", persist_result=False)
    def run() -> None:
        publish_artifacts(**kwargs)

    state = run(return_state=True)
    assert state.is_completed(), state
    run_id: UUID = state.state_details.flow_run_id
    with get_client(sync_client=True) as client:
        found = client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[run_id]))
        )
    return {a.key: a for a in found}


def test_a_registered_run_publishes_a_summary_and_a_shard_table() -> None:
    request = _request()
    results = [_result("s1", "computed", 3, quarantined=1), _result("s2", "skipped", 2)]
    artifacts = _publish_in_a_flow(
        request=request,
        plan=_plan(request),
        results=results,
        status="registered",
        version_uri="file:///out/registry/cats.v2_x/versions/v123.json",
        report_uri="file:///out/runs/0123456789abcdef/v-v123/quality/report.md",
        failed=[],
        preview_uri="file:///out/runs/0123456789abcdef/preview-v123.png",
    )
    # The dataset name is folded to the characters artifact keys allow.
    assert set(artifacts) == {"augflow-cats-v2-x-summary", "augflow-cats-v2-x-shards"}

    summary = artifacts["augflow-cats-v2-x-summary"]
    assert summary.type == "markdown"
    text = summary.data
    assert text.startswith("# cats.v2_x@v123: registered\n")
    assert "- operation: `img2img`, model `tiny-model`" in text
    assert f"- request hash: `{request.request_hash}`" in text
    assert "- rows: 5 of 6 planned, 1 quarantined" in text
    assert "- shards: 2 (1 computed, 1 already committed)" in text
    assert "- registry entry: `file:///out/registry/cats.v2_x/versions/v123.json`" in text
    assert "quality report: `file:///out/runs/0123456789abcdef/v-v123/quality/report.md`" in text
    assert "![preview](file:///out/runs/0123456789abcdef/preview-v123.png)" in text
    assert "Failed checks" not in text

    table = artifacts["augflow-cats-v2-x-shards"]
    assert table.type == "table"
    rows = json.loads(table.data) if isinstance(table.data, str) else table.data
    assert rows == [
        {
            "shard": "s1",
            "rows": 3,
            "quarantined": 1,
            "bytes": 1003,
            "seconds": 0.123,
            "status": "computed",
            "file": "runs/0123456789abcdef/shards/s1.parquet",
        },
        {
            "shard": "s2",
            "rows": 2,
            "quarantined": 0,
            "bytes": 1002,
            "seconds": 0.123,
            "status": "skipped",
            "file": "runs/0123456789abcdef/shards/s2.parquet",
        },
    ]


def test_a_failed_gate_lists_the_failed_checks_and_no_registry_entry() -> None:
    request = _request("dogs")
    artifacts = _publish_in_a_flow(
        request=request,
        plan=_plan(request),
        results=[_result("s1", "computed", 3)],
        status="checks failed, nothing registered",
        version_uri=None,
        report_uri="file:///out/report.md",
        failed=["row_count: expected 6, found 3", "no_nan: 1 row"],
        preview_uri=None,
    )
    text = artifacts["augflow-dogs-summary"].data
    assert text.startswith("# dogs@v123: checks failed, nothing registered\n")
    assert "## Failed checks\n- row_count: expected 6, found 3\n- no_nan: 1 row" in text
    assert "registry entry" not in text and "Preview" not in text
