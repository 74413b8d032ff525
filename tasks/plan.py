"""Plan a request as shards. :func:`make_plan` is pure: the same request and sources give the same
shard ids, seeds, row ids and version."""

from __future__ import annotations

from augflow.schemas.records import (
    Plan,
    ShardSpec,
    SourceItem,
    derive_id,
    variants_per_source,
)
from augflow.schemas.request import AugmentRequest
from augflow.tasks.inputs import list_sources


def make_plan(request: AugmentRequest, sources: list[SourceItem] | None = None) -> Plan:
    """Split the work into shards of about ``shard_size`` output rows.

    Shard ids hash their content (request hash + item ids), so a shard that reappears in a later
    plan, e.g. after new inputs were added, is recognised as already committed. The version hashes
    all shard ids: the same request over the same inputs is the same version.
    """
    h = request.request_hash
    op = request.operation
    shards: list[ShardSpec] = []
    if op.kind == "generate":
        for index, first in enumerate(range(0, op.num_images, request.shard_size)):
            count = min(request.shard_size, op.num_images - first)
            sid = derive_id(h, "range", first, count, length=16)
            shards.append(ShardSpec(shard_id=sid, index=index, first=first, count=count))
        num_rows = op.num_images
    else:
        if sources is None:
            raise ValueError("make_plan needs the sources of a request with inputs")
        per_shard = max(1, request.shard_size // variants_per_source(request))
        for index, start in enumerate(range(0, len(sources), per_shard)):
            chunk = tuple(sources[start : start + per_shard])
            sid = derive_id(h, *(s.source_id for s in chunk), length=16)
            shards.append(ShardSpec(shard_id=sid, index=index, sources=chunk))
        num_rows = len(sources) * variants_per_source(request)
    version = derive_id(h, *(s.shard_id for s in shards), length=12)
    return Plan(
        dataset=request.dataset,
        request_hash=h,
        version=version,
        shards=tuple(shards),
        num_rows=num_rows,
    )


def plan_request(request: AugmentRequest) -> Plan:
    """List the inputs (names only) and plan; computes nothing."""
    sources = None if request.operation.kind == "generate" else list_sources(request)
    return make_plan(request, sources)


class RunLayout:
    """Where a request's objects live under the output root (keys, never full URIs)."""

    def __init__(self, request_hash: str) -> None:
        self.run = f"runs/{request_hash[:16]}"

    def data_file(self, shard_id: str) -> str:
        return f"{self.run}/shards/{shard_id}.parquet"

    def quarantine_file(self, shard_id: str) -> str:
        return f"{self.run}/quarantine/{shard_id}.parquet"

    def commit_marker(self, shard_id: str) -> str:
        return f"{self.run}/commits/{shard_id}.json"

    @property
    def commits(self) -> str:
        return f"{self.run}/commits"

    def image_file(self, shard_id: str, row_id: str) -> str:
        return f"{self.run}/images/{shard_id}/{row_id}.png"

    def preview(self, version: str) -> str:
        return f"{self.run}/preview-{version}.png"

    @property
    def quality(self) -> str:
        return f"{self.run}/quality"
