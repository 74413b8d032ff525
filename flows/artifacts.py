"""Prefect artifacts for a run: a progress bar updated as shards finish, a markdown summary with
a preview thumbnail, and a per-shard table.

URIs, counts and check lines go in, never credentials. The one image is a small thumbnail of the
preview grid, inlined as a ``data:image/png`` URI: the Prefect UI cannot fetch ``file://`` or
private S3 links, while both of its markdown renderers show inline images (the React UI allows
``data:image/`` in ``img src`` explicitly; the Vue UI renders image tokens as they are).
"""

from __future__ import annotations

import base64
import io
import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from uuid import UUID

from prefect.artifacts import (
    create_markdown_artifact,
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)

from augflow.schemas.records import Plan, ShardResult
from augflow.schemas.request import AugmentRequest
from augflow.tasks import progress
from augflow.tasks.gx_docs import data_docs_uri
from augflow.tasks.storage import Storage, open_uri

log = logging.getLogger(__name__)

#: Longest side of the inlined preview thumbnail, and the most base64 it may take.
THUMBNAIL_SIDE = 384
THUMBNAIL_MAX_BYTES = 96_000
#: Seconds between two updates of the progress artifact (the last shard always updates it).
PROGRESS_EVERY_S = 2.0


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
    metrics: dict[str, Any] | None = None,
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
        docs = data_docs_uri(Storage(request.output), report_uri)
        if docs:
            lines.append(f"- Great Expectations Data Docs: `{docs}`")
    if failed:
        lines += ["", "## Failed checks", *[f"- {f}" for f in failed]]
    if metrics:  # the quality gate's measurements (issue 11; docs/quality-gate.md)
        lines += ["", "## Quality metrics", "", "| metric | value |", "|---|---|"]
        lines += [f"| {k} | {v} |" for k, v in sorted(metrics.items())]
    if preview_uri:
        thumb = thumbnail_data_uri(preview_uri)
        lines += ["", "## Preview"]
        if thumb:
            lines.append(f"![preview]({thumb})")
        lines.append(f"full size: `{preview_uri}`")
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


def thumbnail_data_uri(uri: str) -> str | None:
    """A ``data:image/png;base64,...`` thumbnail of the image at ``uri`` (None if unreadable)."""
    from PIL import Image

    try:
        with open_uri(uri) as fh:
            img = Image.open(io.BytesIO(fh.read()))
            img.load()
    except Exception as exc:
        log.warning("no preview thumbnail for %s: %s", uri, exc)
        return None
    side = THUMBNAIL_SIDE
    while True:
        thumb = img.convert("RGB")
        thumb.thumbnail((side, side))
        buf = io.BytesIO()
        thumb.save(buf, format="PNG", optimize=True)
        data = base64.b64encode(buf.getvalue()).decode()
        if len(data) <= THUMBNAIL_MAX_BYTES or side <= 64:
            return f"data:image/png;base64,{data}"
        side //= 2


class _ShardProgress:
    """A Prefect progress artifact: the share of the plan's shards finished, updated as shards
    finish (at most every :data:`PROGRESS_EVERY_S`, and always at the last one)."""

    def __init__(self, request: AugmentRequest, plan: Plan) -> None:
        self.total = max(1, len(plan.shards) + len(plan.carried))
        self.done: set[str] = set()
        self.last = float("-inf")  # the first finished shard always updates it
        # the sync API returns the id (create_progress_artifact is async-dispatched)
        self.id: UUID | None = create_progress_artifact(  # type: ignore[assignment]
            progress=0.0,
            key=_key(request, "progress"),
            description=f"{request.dataset}@{plan.version}: shards finished",
        )

    def __call__(self, event: progress.Event) -> None:
        if not isinstance(event, ShardResult) or self.id is None:
            return
        self.done.add(event.shard_id)
        now = time.monotonic()
        if len(self.done) < self.total and now - self.last < PROGRESS_EVERY_S:
            return
        self.last = now
        update_progress_artifact(self.id, progress=round(100.0 * len(self.done) / self.total, 1))


@contextmanager
def shard_progress_artifact(request: AugmentRequest, plan: Plan) -> Iterator[None]:
    """Keep the run's progress artifact current while the block runs (inside a flow run)."""
    try:
        tracker = _ShardProgress(request, plan)
    except Exception as exc:  # an artifact is a view: it never fails the run
        log.warning("no progress artifact: %s", exc)
        yield
        return
    with progress.listening(tracker):
        yield
