"""Run artifacts, published inside a flow run and read back from a real Prefect server."""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest
from PIL import Image

from augflow.flows.artifacts import THUMBNAIL_MAX_BYTES, THUMBNAIL_SIDE
from augflow.schemas import parse_request
from augflow.schemas.records import Plan, ShardResult, ShardSpec

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("prefect_server")]


def _request(dataset: str = "cats.v2_x", **more: str):
    return parse_request(
        {
            "dataset": dataset,
            "operation": {"kind": "img2img", "variants": 2},
            "inputs": "/in",
            "model": {"id": "tiny-model"},
            **more,
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


def _preview(tmp_path: Path, size: tuple[int, int] = (1024, 512)) -> str:
    from PIL import Image

    path = tmp_path / "preview.png"
    Image.effect_noise(size, 60).convert("RGB").save(path)
    return f"file://{path}"


def test_a_registered_run_publishes_a_summary_and_a_shard_table(tmp_path: Path) -> None:
    request = _request(output=str(tmp_path / "out"))
    preview = _preview(tmp_path)
    # the gate's report and, beside it, its GX Data Docs (tasks/gx_docs.py)
    docs = tmp_path / "out" / "runs/0123456789abcdef/v-v123/quality/data-docs/index.html"
    docs.parent.mkdir(parents=True)
    docs.write_text("<html></html>")
    results = [_result("s1", "computed", 3, quarantined=1), _result("s2", "skipped", 2)]
    artifacts = _publish_in_a_flow(
        request=request,
        plan=_plan(request),
        results=results,
        status="registered",
        version_uri="file:///out/registry/cats.v2_x/versions/v123.json",
        report_uri=f"file://{tmp_path}/out/runs/0123456789abcdef/v-v123/quality/report.md",
        failed=[],
        preview_uri=preview,
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
    assert f"quality report: `file://{docs.parent.parent}/report.md`" in text
    assert f"- Great Expectations Data Docs: `file://{docs}`" in text
    # The Prefect UI cannot fetch file:// (or private S3) links: the preview is inlined as a
    # small PNG thumbnail, and the full-size URI is given as text.
    thumb = text.split("![preview](data:image/png;base64,", 1)[1].split(")", 1)[0]
    img = Image.open(io.BytesIO(base64.b64decode(thumb)))
    assert (
        img.format == "PNG" and max(img.size) <= THUMBNAIL_SIDE and img.size[0] == 2 * img.size[1]
    )
    assert len(thumb) <= THUMBNAIL_MAX_BYTES
    assert f"full size: `{preview}`" in text
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
        metrics={"duplicate_fraction": 0.25, "kid": 0.0123},
    )
    text = artifacts["augflow-dogs-summary"].data
    # the quality gate's measurements (issue 11) are in the artifact too
    assert "## Quality metrics" in text and "| duplicate_fraction | 0.25 |" in text
    assert text.startswith("# dogs@v123: checks failed, nothing registered\n")
    assert "## Failed checks\n- row_count: expected 6, found 3\n- no_nan: 1 row" in text
    assert "registry entry" not in text and "Preview" not in text


def test_an_unreadable_preview_leaves_a_link_and_no_thumbnail() -> None:
    request = _request("fish")
    artifacts = _publish_in_a_flow(
        request=request,
        plan=_plan(request),
        results=[_result("s1", "computed", 3)],
        status="registered",
        version_uri="file:///out/registry/fish/versions/v123.json",
        report_uri=None,
        failed=[],
        preview_uri="file:///nowhere/preview.png",
    )
    text = artifacts["augflow-fish-summary"].data
    assert "data:image" not in text and "full size: `file:///nowhere/preview.png`" in text


def test_the_progress_artifact_follows_the_shards(monkeypatch: pytest.MonkeyPatch) -> None:
    from prefect import flow, get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    from augflow.flows import artifacts
    from augflow.flows.artifacts import shard_progress_artifact
    from augflow.tasks import progress

    # however slow this machine is, the updates below fall within one throttle period
    monkeypatch.setattr(artifacts, "PROGRESS_EVERY_S", 3600.0)
    request = _request("birds")
    plan = _plan(request).model_copy(
        update={"shards": tuple(ShardSpec(shard_id=f"s{i}", index=i) for i in range(4))}
    )
    seen: list[float] = []

    def read(run_id: UUID) -> float:
        with get_client(sync_client=True) as client:
            found = client.read_artifacts(
                artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[run_id]))
            )
        (art,) = [a for a in found if a.type == "progress"]
        assert art.key == "augflow-birds-progress"
        return float(art.data)

    @flow(name="progress-test", persist_result=False)
    def run() -> None:
        from prefect.runtime import flow_run

        with shard_progress_artifact(request, plan):
            seen.append(read(flow_run.id))
            progress.emit(_result("s0", "skipped", 2))  # the first finished shard updates it
            seen.append(read(flow_run.id))
            for sid in ("s1", "s2"):  # within the throttle period: not sent
                progress.emit(_result(sid, "computed", 2))
            seen.append(read(flow_run.id))
            progress.emit(_result("s3", "computed", 2))  # the last shard always is
            seen.append(read(flow_run.id))

    state = run(return_state=True)
    assert state.is_completed(), state
    assert seen == [0.0, 25.0, 25.0, 100.0]
