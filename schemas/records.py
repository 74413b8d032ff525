"""Small records that travel between plan, workers, validation and registry (never images)."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from typing import Literal

from pydantic import Field

from augflow.schemas.markers import CommitMarker
from augflow.schemas.request import AugmentRequest, Frozen, GenerateOp


class SourceItem(Frozen):
    """One input image: where it is and its stable id (the path relative to the inputs root)."""

    source_id: str
    uri: str
    row: int | None = Field(default=None, description="row index when the source is a Parquet file")


class ShardSpec(Frozen):
    """A unit of work. ``generate`` shards are a range of image indices, others a list of sources."""

    shard_id: str
    index: int
    sources: tuple[SourceItem, ...] = ()
    first: int = 0
    count: int = 0

    @property
    def num_sources(self) -> int:
        return len(self.sources) if self.sources else self.count


class ShardResult(Frozen):
    """What a worker reports for a committed shard (paths are relative to the output root)."""

    shard_id: str
    data_file: str
    quarantine_file: str | None
    num_rows: int
    num_quarantined: int
    data_bytes: int
    seconds: float
    status: Literal["computed", "skipped", "carried"]
    model_revision: str = ""
    scheduler: str = ""
    # The Ray node that computed the shard (empty for skipped/carried ones), set by the Ray actor from
    # the actor's runtime context; deliberately not in the commit marker, which stays deterministic.
    node_id: str = ""

    @classmethod
    def from_marker(
        cls,
        marker: CommitMarker,
        status: Literal["computed", "skipped", "carried"],
        seconds: float = 0.0,
    ) -> ShardResult:
        """The result recorded in a shard's commit marker."""
        return cls(
            shard_id=marker.shard_id,
            data_file=marker.data_file,
            quarantine_file=marker.quarantine_file,
            num_rows=marker.num_rows,
            num_quarantined=marker.num_quarantined,
            data_bytes=marker.data_bytes,
            seconds=seconds,
            status=status,
            model_revision=marker.model_revision,
            scheduler=marker.scheduler,
        )


class Plan(Frozen):
    """What a request will compute: shards, counts, and the version it would register as.

    ``carried`` are committed shards of ``base_version`` (the latest version of the same request)
    that the new version keeps without recomputing: an incremental refresh computes only sources
    that version has not seen. ``num_rows`` counts every planned row, carried ones included.
    """

    dataset: str
    request_hash: str
    version: str
    shards: tuple[ShardSpec, ...]
    num_rows: int
    base_version: str | None = None
    carried: tuple[ShardResult, ...] = ()


class WorkItem(Frozen):
    """One output row to make: the row id and seed are fixed before any compute."""

    row_id: str
    source_id: str
    source_uri: str | None
    source_row: int | None
    variant: int
    seed: int
    class_label: int | None = None
    prompt: str | None = None


def derive_id(*parts: object, length: int = 24) -> str:
    return hashlib.sha256(":".join(str(p) for p in parts).encode()).hexdigest()[:length]


def derive_seed(request_hash: str, seed: int, source_id: str, variant: int) -> int:
    digest = hashlib.sha256(f"{request_hash}:{seed}:{source_id}:{variant}".encode()).digest()
    return int.from_bytes(digest[:8], "big") & (2**63 - 1)


def variants_per_source(request: AugmentRequest) -> int:
    return request.operation.outputs_per_source()


def iter_work_items(request: AugmentRequest, shard: ShardSpec) -> Iterator[WorkItem]:
    """The output rows of a shard, in order. Pure: the same request and shard give the same items."""
    h = request.request_hash
    op = request.operation
    if isinstance(op, GenerateOp):
        for i in range(shard.first, shard.first + shard.count):
            source_id = f"generated/{i:09d}"
            label, prompt = op.condition_for(i)
            yield WorkItem(
                row_id=derive_id(h, source_id, 0),
                source_id=source_id,
                source_uri=None,
                source_row=None,
                variant=0,
                seed=derive_seed(h, request.seed, source_id, 0),
                class_label=label,
                prompt=prompt,
            )
        return
    prompt = op.source_prompt()
    for src in shard.sources:
        for v in range(variants_per_source(request)):
            yield WorkItem(
                row_id=derive_id(h, src.source_id, v),
                source_id=src.source_id,
                source_uri=src.uri,
                source_row=src.row,
                variant=v,
                seed=derive_seed(h, request.seed, src.source_id, v),
                prompt=prompt,
            )


class RunOutcome(Frozen):
    """What a flow run ends with; the CLI prints it and ``run_deployment`` returns it."""

    dataset: str
    version: str
    status: Literal["registered", "already_registered"]
    uri: str
    num_rows: int
    num_quarantined: int
    shards_computed: int
    shards_skipped: int
    report_uri: str | None
    preview_uri: str | None

    @property
    def ref(self) -> str:
        return f"{self.dataset}@{self.version}"
