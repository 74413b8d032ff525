"""Small records that travel between plan, workers, validation and registry (never images)."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from typing import Any, Literal, overload

from pydantic import Field, GetCoreSchemaHandler
from pydantic_core import core_schema

from augflow.schemas.markers import CommitMarker
from augflow.schemas.request import AugmentRequest, Frozen, GenerateOp


class SourceItem(Frozen):
    """One input image: where it is and its stable id (the path relative to the inputs root)."""

    source_id: str
    uri: str
    row: int | None = Field(default=None, description="row index when the source is a Parquet file")
    rejected: str | None = Field(
        default=None,
        description="why the listing already knows this item cannot be used (e.g. not a regular "
        "file); the worker quarantines it with this reason without reading it",
    )
    label: int | None = Field(
        default=None,
        description="the row's class label (a Parquet input's `label` or `class_label` column); "
        "copied into each output row's class_label and conditions class-conditional models",
    )


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


class ShardRanges(Sequence[ShardSpec]):
    """The shards of a ``generate`` plan, computed on demand: ``len`` and indexing cost O(1), so a
    plan of many shards holds three numbers, not one object per shard (or per image).

    Shard ``i`` covers images ``[i * shard_size, min((i + 1) * shard_size, num_images))``; its id
    hashes the request hash and its range, exactly as a materialised plan would.
    """

    __slots__ = ("num_images", "request_hash", "shard_size")

    def __init__(self, request_hash: str, num_images: int, shard_size: int) -> None:
        if num_images < 0 or shard_size < 1:
            raise ValueError(f"bad shard ranges: {num_images} images, shard_size {shard_size}")
        self.request_hash = request_hash
        self.num_images = num_images
        self.shard_size = shard_size

    def __len__(self) -> int:
        return -(-self.num_images // self.shard_size)

    @overload
    def __getitem__(self, index: int) -> ShardSpec: ...
    @overload
    def __getitem__(self, index: slice) -> list[ShardSpec]: ...
    def __getitem__(self, index: int | slice) -> ShardSpec | list[ShardSpec]:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        n = len(self)
        i = index + n if index < 0 else index
        if not 0 <= i < n:
            raise IndexError(f"shard {index} of {n}")
        first = i * self.shard_size
        count = min(self.shard_size, self.num_images - first)
        return ShardSpec(shard_id=self.shard_id(first, count), index=i, first=first, count=count)

    def __iter__(self) -> Iterator[ShardSpec]:
        return (self[i] for i in range(len(self)))

    def shard_id(self, first: int, count: int) -> str:
        return derive_id(self.request_hash, "range", first, count, length=16)

    def shard_ids(self) -> Iterator[str]:
        """Every shard id, in order, without building the specs."""
        for first in range(0, self.num_images, self.shard_size):
            yield self.shard_id(first, min(self.shard_size, self.num_images - first))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ShardRanges):
            return NotImplemented
        return (self.request_hash, self.num_images, self.shard_size) == (
            other.request_hash,
            other.num_images,
            other.shard_size,
        )

    def __hash__(self) -> int:
        return hash((self.request_hash, self.num_images, self.shard_size))

    def __repr__(self) -> str:
        return (
            f"ShardRanges({self.num_images} images, {self.shard_size} a shard, {len(self)} shards)"
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "request_hash": self.request_hash,
            "num_images": self.num_images,
            "shard_size": self.shard_size,
        }

    @classmethod
    def __get_pydantic_core_schema__(
        cls, source: Any, handler: GetCoreSchemaHandler
    ) -> core_schema.CoreSchema:
        def validate(value: Any) -> ShardRanges:
            if isinstance(value, ShardRanges):
                return value
            if isinstance(value, dict) and set(value) == {
                "request_hash",
                "num_images",
                "shard_size",
            }:
                return cls(
                    str(value["request_hash"]), int(value["num_images"]), int(value["shard_size"])
                )
            raise ValueError("expected ShardRanges or its JSON form")

        return core_schema.no_info_plain_validator_function(
            validate,
            serialization=core_schema.plain_serializer_function_ser_schema(lambda v: v.to_json()),
        )


class ShardResult(Frozen):
    """What a worker reports for a committed shard (paths are relative to the output root).

    ``data_file`` is None when every input of the shard was quarantined: no 0-row file exists.
    """

    shard_id: str
    data_file: str | None
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

    ``shards`` is a tuple for plans over inputs and a lazy :class:`ShardRanges` for ``generate``.
    ``num_inputs`` is the number of input items the listing found (image objects plus Parquet
    rows), ``skipped`` the objects a documented rule left out, by reason: every object under the
    inputs is either an input item or a skip.
    """

    dataset: str
    request_hash: str
    version: str
    # left to right: a ShardRanges is taken as it is, never iterated as a candidate tuple
    shards: ShardRanges | tuple[ShardSpec, ...] = Field(union_mode="left_to_right")
    num_rows: int
    base_version: str | None = None
    carried: tuple[ShardResult, ...] = ()
    num_inputs: int = 0
    skipped: dict[str, int] = Field(default_factory=dict)

    def shard_ids(self) -> Iterator[str]:
        """The ids of the shards to compute, in order, without building lazy shards' specs."""
        if isinstance(self.shards, ShardRanges):
            return self.shards.shard_ids()
        return (s.shard_id for s in self.shards)


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
                class_label=src.label,
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
    #: objects under the inputs left out by a documented rule (dotfiles, ...), by reason
    skipped: dict[str, int] = Field(default_factory=dict)

    @property
    def ref(self) -> str:
        return f"{self.dataset}@{self.version}"
