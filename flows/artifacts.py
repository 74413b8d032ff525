"""Prefect artifacts for a run: a markdown summary, a per-shard table and the preview grid.

Only URIs, counts and check lines go in; never images, never credentials.
"""

from __future__ import annotations

from prefect.artifacts import create_markdown_artifact, create_table_artifact

from augflow.schemas.records import Plan, ShardResult
from augflow.schemas.request import AugmentRequest


def _key(request: AugmentRequest, what: str) -> str:
    # Artifact keys allow lowercase letters, digits and dashes only.
    name = "".join(c if c.isalnum() else "-" for c in request.dataset.lower())
    return f"augflow-{name}-{what}"[:100]


def publish_artifacts(
    request: AugmentRequest,
    plan: Plan,
    results: list[ShardResult],
    status: str,
    version_uri: str | None,
    report_uri: str | None,
    failed: list[str],
    preview_uri: str | None,
) -> None:
    rows = sum(r.num_rows for r in results)
    quarantined = sum(r.num_quarantined for r in results)
    computed = sum(r.status == "computed" for r in results)
    lines = [
        f"# {request.dataset}@{plan.version}: {status}",
        "",
        f"- operation: `{request.operation.kind}`, model `{request.model.id}`",
        f"- request hash: `{plan.request_hash}`",
        f"- rows: {rows} of {plan.num_rows} planned, {quarantined} quarantined",
        f"- shards: {len(plan.shards)} ({computed} computed, {len(results) - computed} already committed)",
    ]
    if version_uri:
        lines.append(f"- registry entry: `{version_uri}`")
    if report_uri:
        lines.append(f"- quality report: `{report_uri}`")
    if failed:
        lines += ["", "## Failed checks", *[f"- {f}" for f in failed]]
    if preview_uri:
        lines += ["", "## Preview", f"![preview]({preview_uri})", f"`{preview_uri}`"]
    create_markdown_artifact(
        key=_key(request, "summary"), markdown="\n".join(lines), description="augflow run summary"
    )
    create_table_artifact(
        key=_key(request, "shards"),
        table=[
            {
                "shard": r.shard_id,
                "rows": r.num_rows,
                "quarantined": r.num_quarantined,
                "bytes": r.data_bytes,
                "seconds": round(r.seconds, 3),
                "status": r.status,
                "file": r.data_file,
            }
            for r in results
        ],
        description="per-shard results",
    )
