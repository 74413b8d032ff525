"""Plan a request as shards. :func:`make_plan` is pure: the same request and sources give the same
shard ids, seeds, row ids and version."""

from __future__ import annotations

from augflow.schemas.records import (
    Plan,
    ShardResult,
    ShardSpec,
    SourceItem,
    derive_id,
    variants_per_source,
)
from augflow.schemas.request import AugmentRequest, GenerateOp
from augflow.tasks.commits import carried_results
from augflow.tasks.inputs import list_sources
from augflow.tasks.layout import RunLayout, shard_id_of
from augflow.tasks.register import list_versions
from augflow.tasks.storage import Storage


def make_plan(
    request: AugmentRequest,
    sources: list[SourceItem] | None = None,
    base_version: str | None = None,
    carried: tuple[ShardResult, ...] = (),
) -> Plan:
    """Split the work into shards of about ``shard_size`` output rows.

    Shard ids hash their content (request hash + item ids), so a shard that reappears in a later
    plan is recognised as already committed. The version hashes every shard id, carried ones
    included: the same request over the same inputs is the same version. ``sources`` are the
    items still to compute; ``carried`` are committed shards of ``base_version`` kept as they are.
    """
    h = request.request_hash
    op = request.operation
    shards: list[ShardSpec] = []
    if isinstance(op, GenerateOp):
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
    num_rows += sum(c.num_rows + c.num_quarantined for c in carried)
    all_ids = sorted([s.shard_id for s in shards] + [c.shard_id for c in carried])
    return Plan(
        dataset=request.dataset,
        request_hash=h,
        version=derive_id(h, *all_ids, length=12),
        shards=tuple(shards),
        num_rows=num_rows,
        base_version=base_version if carried else None,
        carried=carried,
    )


def plan_request(request: AugmentRequest) -> Plan:
    """List the inputs (names only) and plan; computes nothing.

    When a version of this same request is registered, only sources it has not seen are planned
    and its shards are carried over (an incremental refresh). Quarantined sources count as seen:
    they are accounted for in that version and are not retried.
    """
    if not request.operation.takes_inputs:
        return make_plan(request)
    sources = list_sources(request)
    base = _base_version(request)
    if base is None:
        return make_plan(request, sources)
    storage = Storage(request.output)
    layout = RunLayout(request.request_hash)
    # Only shards whose files still check out against their markers; a damaged one is dropped
    # (and logged), so its sources count as unseen and are planned again.
    carried = carried_results(storage, layout, base.shard_ids)
    keys = [c.data_file for c in carried] + [
        c.quarantine_file for c in carried if c.quarantine_file
    ]
    seen = (
        set(storage.read_parquet(keys, columns=["source_id"]).column(0).to_pylist())
        if keys
        else set()
    )
    fresh = [s for s in sources if s.source_id not in seen]
    return make_plan(request, fresh, base.version, carried)


class _Base:
    def __init__(self, version: str, shard_ids: list[str]) -> None:
        self.version, self.shard_ids = version, shard_ids


def _base_version(request: AugmentRequest) -> _Base | None:
    """The newest registered version made by this same request (same hash), if any."""
    storage = Storage(request.output)
    same = [
        e for e in list_versions(storage, request.dataset) if e.request_hash == request.request_hash
    ]
    if not same:
        return None
    entry = same[-1]
    return _Base(entry.version, [shard_id_of(f.key) for f in entry.files])
