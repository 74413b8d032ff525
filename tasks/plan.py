"""Plan a request as shards. :func:`make_plan` is pure: the same request and sources give the same
shard ids, seeds, row ids and version.

Planning is bounded: a ``generate`` plan holds its shards as :class:`ShardRanges` (three numbers,
shards computed on demand), so its memory and time grow with the number of shards, never with the
number of images; and a request beyond :data:`MAX_IMAGES` rows or :data:`MAX_SHARDS` shards is
refused (generate: when the request is validated; inputs: once they are listed) before anything
runs.
"""

from __future__ import annotations

from augflow.schemas.errors import RequestError
from augflow.schemas.records import (
    Plan,
    ShardRanges,
    ShardResult,
    ShardSpec,
    SourceItem,
    derive_id,
    variants_per_source,
)
from augflow.schemas.request import MAX_SHARDS, AugmentRequest, GenerateOp, check_plan_size
from augflow.tasks.commits import carried_results
from augflow.tasks.inputs import list_inputs
from augflow.tasks.layout import RunLayout, shard_id_of
from augflow.tasks.register import list_versions
from augflow.tasks.storage import Storage


def make_plan(
    request: AugmentRequest,
    sources: list[SourceItem] | None = None,
    base_version: str | None = None,
    carried: tuple[ShardResult, ...] = (),
    *,
    num_inputs: int | None = None,
    skipped: dict[str, int] | None = None,
) -> Plan:
    """Split the work into shards of about ``shard_size`` output rows.

    Shard ids hash their content (request hash + item ids), so a shard that reappears in a later
    plan is recognised as already committed. The version hashes every shard id, carried ones
    included: the same request over the same inputs is the same version. ``sources`` are the
    items still to compute; ``carried`` are committed shards of ``base_version`` kept as they are.
    ``num_inputs`` / ``skipped`` are what the listing found (for the plan's accounting only).
    """
    h = request.request_hash
    op = request.operation
    shards: ShardRanges | tuple[ShardSpec, ...]
    if isinstance(op, GenerateOp):
        ranges = ShardRanges(h, op.num_images, request.shard_size)
        shards = ranges
        shard_ids = list(ranges.shard_ids())  # one short string per shard: bounded by MAX_SHARDS
        num_rows = op.num_images
        num_inputs = 0
    else:
        if sources is None:
            raise ValueError("make_plan needs the sources of a request with inputs")
        variants = variants_per_source(request)
        _check_size(len(sources), request.shard_size, variants, len(carried))
        per_shard = max(1, request.shard_size // variants)
        specs = []
        for index, start in enumerate(range(0, len(sources), per_shard)):
            chunk = tuple(sources[start : start + per_shard])
            sid = derive_id(h, *(s.source_id for s in chunk), length=16)
            specs.append(ShardSpec(shard_id=sid, index=index, sources=chunk))
        shards = tuple(specs)
        shard_ids = [s.shard_id for s in specs]
        num_rows = len(sources) * variants
    num_rows += sum(c.num_rows + c.num_quarantined for c in carried)
    all_ids = sorted(shard_ids + [c.shard_id for c in carried])
    return Plan(
        dataset=request.dataset,
        request_hash=h,
        version=derive_id(h, *all_ids, length=12),
        shards=shards,
        num_rows=num_rows,
        base_version=base_version if carried else None,
        carried=carried,
        num_inputs=len(sources or ()) if num_inputs is None else num_inputs,
        skipped=dict(skipped or {}),
    )


def _check_size(num_sources: int, shard_size: int, variants: int, carried: int) -> None:
    try:
        check_plan_size(num_sources, shard_size, variants)
    except ValueError as exc:
        field, _, msg = str(exc).partition(": ")
        raise RequestError(field, msg) from None
    per_shard = max(1, shard_size // variants)
    total = -(-num_sources // per_shard) + carried
    if total > MAX_SHARDS:
        raise RequestError(
            "shard_size",
            f"{total} shards ({carried} of them kept from the registered version), more than the "
            f"{MAX_SHARDS} shards one version may hold; register the new inputs as a new dataset "
            "or with a larger shard_size",
        )


def plan_request(request: AugmentRequest) -> Plan:
    """List the inputs (names only) and plan; computes nothing.

    When a version of this same request is registered, only sources it has not seen are planned
    and its shards are carried over (an incremental refresh). Quarantined sources count as seen:
    they are accounted for in that version and are not retried.
    """
    if not request.operation.takes_inputs:
        return make_plan(request)
    listing = list_inputs(request)
    sources = listing.items
    base = _base_version(request)
    if base is None:
        return make_plan(request, sources, num_inputs=len(sources), skipped=listing.skipped)
    storage = Storage(request.output)
    layout = RunLayout(request.request_hash)
    # Only shards whose files still check out against their markers; a damaged one is dropped
    # (and logged), so its sources count as unseen and are planned again.
    carried = carried_results(storage, layout, base.shard_ids)
    keys = [c.data_file for c in carried if c.data_file] + [
        c.quarantine_file for c in carried if c.quarantine_file
    ]
    seen = (
        set(storage.read_parquet(keys, columns=["source_id"]).column(0).to_pylist())
        if keys
        else set()
    )
    fresh = [s for s in sources if s.source_id not in seen]
    return make_plan(
        request, fresh, base.version, carried, num_inputs=len(sources), skipped=listing.skipped
    )


class _Base:
    def __init__(self, version: str, shard_ids: list[str]) -> None:
        self.version, self.shard_ids = version, shard_ids


def _base_version(request: AugmentRequest) -> _Base | None:
    """The newest registered version made by this same request (same hash), if any.

    Its shards are those of its data files and of its quarantine files: a shard whose every input
    was quarantined has no data file (no 0-row file is written), only a quarantine file.
    """
    storage = Storage(request.output)
    same = [
        e for e in list_versions(storage, request.dataset) if e.request_hash == request.request_hash
    ]
    if not same:
        return None
    entry = same[-1]
    keys = [f.key for f in entry.files] + [f.key for f in entry.quarantine_files]
    return _Base(entry.version, sorted({shard_id_of(k) for k in keys}))
