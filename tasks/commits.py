"""Commit markers: how a shard becomes committed, how committed shards are found again, and how a
damaged one is detected and committed again.

A shard's data (and quarantine) files are written first; the marker is created last, exclusively,
so its presence means the files were complete. Files can still be damaged afterwards (truncated by
a full disk or a bad copy, overwritten by hand), so every reuse of a committed shard — a re-run
skipping it, an incremental refresh carrying it, a worker finding it already done — first checks
its files against the marker (:func:`check_files`):

* **size**, from a listing (one LIST per 1000 objects on S3, never a read): a truncated or
  replaced file is caught for free;
* **content**, when it matters: on S3 the listed ETag is compared with the one the marker
  recorded (``data_etag``, the MD5 or multipart MD5 an MD5-ETag store reports), again from the
  listing alone; only where that cannot decide (a store whose ETags are not MD5s, e.g. SSE-KMS, or
  a file written with another part size) is the object read and its sha256 compared. Local files
  are always hashed: a local read is cheap next to validation, and there is no ETag to trust.
  So on S3 reusing a committed version of any size costs listings, not a re-read of its bytes.

A shard that fails the check is logged, naming the shard and what is wrong, and recomputed. Its
marker is never overwritten or deleted (markers are exclusive creates): the recomputed shard is
committed under the next *generation* (``commits/<shard>.g<N>.json``), and the newest generation
is the shard's state. When the recomputed bytes are identical to what the marker recorded (the
usual case: computation is deterministic), the damaged files are simply rewritten in place and the
marker stays valid — which also repairs every registered version that lists those files. When they
differ (other hardware, a library upgrade), they go to content-addressed keys of the new generation,
so two runs racing to repair the same shard never overwrite each other: one marker wins the
exclusive create, the other run adopts it and removes its own copy. Format-1 markers (no digests)
are checked by size; a damaged one is always recomputed into generation 1.
"""

from __future__ import annotations

import hashlib
import logging
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass

from pydantic import ValidationError

from augflow.schemas.errors import CommitConflictError, StorageError
from augflow.schemas.markers import CommitMarker, FileCheck
from augflow.schemas.records import ShardResult
from augflow.tasks.layout import RunLayout, generation_tag, parse_commit_marker
from augflow.tasks.storage import ObjectInfo, Storage, content_etag

log = logging.getLogger(__name__)

#: how many generations one commit call tries before giving up (each needs a lost race)
MAX_GENERATION_RACES = 5


# --- reading markers ---------------------------------------------------------------------------


def read_marker(storage: Storage, key: str) -> CommitMarker:
    """The marker at ``key``; FileNotFoundError when the shard is not committed."""
    marker = _parse_marker(storage, key)
    if isinstance(marker, str):
        raise StorageError(f"{marker}; delete it to recompute the shard")
    return marker


def _parse_marker(storage: Storage, key: str) -> CommitMarker | str:
    """The marker at ``key``, or why it cannot be read as one (FileNotFoundError if absent)."""
    raw = storage.read_bytes(key, small=True)
    try:
        return CommitMarker.model_validate_json(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        if first["type"] == "json_invalid":
            return f"commit marker {storage.uri(key)} is not valid JSON ({first['msg']})"
        where = ".".join(str(p) for p in first["loc"]) or "marker"
        return f"commit marker {storage.uri(key)} is malformed at `{where}`: {first['msg']}"


def write_marker(storage: Storage, layout: RunLayout, marker: CommitMarker) -> bool:
    """Commit a shard: create its marker exclusively. True when this call created it."""
    key = layout.commit_marker(marker.shard_id, marker.generation)
    return storage.create_json_exclusive(key, marker.to_json())


@dataclass(frozen=True)
class ShardState:
    """Where a shard stands: its newest marker generation (-1: never committed), that marker
    (None when absent or unreadable) and, when the commit cannot be used, why."""

    shard_id: str
    generation: int = -1
    marker: CommitMarker | None = None
    damage: str | None = None

    @property
    def committed(self) -> bool:
        """Committed and its files check out: safe to reuse."""
        return self.marker is not None and self.damage is None


def shard_state(storage: Storage, layout: RunLayout, shard_id: str) -> ShardState:
    """The state of one shard, its files checked (a worker asks before computing it).

    Generations are created in order, so walking 0, 1, 2... until one is missing finds the newest:
    one extra GET (a miss) for a shard that was never damaged.
    """
    generation = -1
    while storage.exists(layout.commit_marker(shard_id, generation + 1)):
        generation += 1
    if generation < 0:
        return ShardState(shard_id)
    return _checked(storage, layout, shard_id, generation, listing=None)


def _checked(
    storage: Storage,
    layout: RunLayout,
    shard_id: str,
    generation: int,
    listing: dict[str, ObjectInfo] | None,
) -> ShardState:
    key = layout.commit_marker(shard_id, generation)
    try:
        marker = _parse_marker(storage, key)
    except FileNotFoundError:
        return ShardState(shard_id)
    if isinstance(marker, str):
        return ShardState(shard_id, generation, None, marker)
    if marker.shard_id != shard_id or marker.generation != generation:
        return ShardState(
            shard_id,
            generation,
            None,
            f"its commit marker {storage.uri(key)} names shard {marker.shard_id!r} "
            f"generation {marker.generation}",
        )
    damage = check_files(storage, marker, listing)
    return ShardState(shard_id, generation, marker, damage)


def check_files(
    storage: Storage, marker: CommitMarker, listing: dict[str, ObjectInfo] | None = None
) -> str | None:
    """Why ``marker``'s files do not hold what it recorded, or None when they do.

    ``listing`` (from :meth:`Storage.info_tree`) saves a request per file when many shards are
    checked at once; without it each file costs one HEAD.
    """
    for check in marker.files():
        if listing is not None:
            info = listing.get(check.key)
        else:
            try:
                info = storage.info(check.key)
            except FileNotFoundError:
                info = None
        problem = _file_problem(storage, check, info)
        if problem:
            return f"{storage.uri(check.key)} {problem}"
    return None


def _file_problem(storage: Storage, check: FileCheck, info: ObjectInfo | None) -> str | None:
    if info is None:
        return "is missing"
    if check.bytes is not None and info.size != check.bytes:
        return f"has {info.size} bytes where its commit marker recorded {check.bytes}"
    if check.sha256 is None:
        return None  # a format-1 marker: the size is all it recorded
    if not storage.is_local and check.etag is not None and info.etag == check.etag:
        return None  # the store's MD5 of these bytes matches: same content, nothing read
    try:
        digest = storage.sha256(check.key)
    except FileNotFoundError:
        return "is missing"
    if digest != check.sha256:
        return f"has sha256 {digest[:12]}… where its commit marker recorded {check.sha256[:12]}…"
    return None


# --- many shards at once (the driver) ------------------------------------------------------------


def shard_states(storage: Storage, layout: RunLayout, shard_ids: Iterable[str]) -> list[ShardState]:
    """The states of many shards from three listings (commits, shards, quarantine) plus one GET
    per committed marker; files are checked as :func:`check_files` says."""
    wanted = list(dict.fromkeys(shard_ids))
    newest: dict[str, int] = defaultdict(lambda: -1)
    for key in storage.list(layout.commits):
        parsed = parse_commit_marker(key)
        if parsed is not None:
            sid, gen = parsed
            newest[sid] = max(newest[sid], gen)
    if not any(newest.get(sid, -1) >= 0 for sid in wanted):
        return [ShardState(sid) for sid in wanted]
    listing = storage.info_tree(layout.shards) | storage.info_tree(layout.quarantine)
    states = []
    for sid in wanted:
        gen = newest.get(sid, -1)
        states.append(
            ShardState(sid) if gen < 0 else _checked(storage, layout, sid, gen, listing=listing)
        )
    return states


def _report(state: ShardState, use: str) -> None:
    log.warning(
        "shard %s is damaged and will be recomputed instead of %s: %s",
        state.shard_id,
        use,
        state.damage,
    )


def committed_results(
    storage: Storage, layout: RunLayout, shard_ids: Iterable[str]
) -> dict[str, ShardResult]:
    """Results of the shards among ``shard_ids`` that are committed and whose files check out.

    A damaged shard is logged (naming it and what is wrong) and left out, so it is recomputed.
    """
    done: dict[str, ShardResult] = {}
    for state in shard_states(storage, layout, shard_ids):
        if state.committed:
            assert state.marker is not None
            done[state.shard_id] = ShardResult.from_marker(state.marker, "skipped")
        elif state.damage:
            _report(state, "reused")
    return done


def carried_results(
    storage: Storage, layout: RunLayout, shard_ids: Iterable[str]
) -> tuple[ShardResult, ...]:
    """Shards an incremental refresh carries into the new version: only those whose files check
    out. A damaged one is logged and dropped; its sources, no longer seen, are planned again."""
    carried = []
    for state in shard_states(storage, layout, shard_ids):
        if state.committed:
            assert state.marker is not None
            carried.append(ShardResult.from_marker(state.marker, "carried"))
        elif state.damage:
            _report(state, "carried")
        else:
            log.warning(
                "shard %s of the base version has no commit marker; planning it again",
                state.shard_id,
            )
    return tuple(carried)


# --- committing ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class ShardFiles:
    """A computed shard, encoded and ready to commit: the Parquet bytes and what they hold."""

    shard_id: str
    data: bytes | None  # None: every input was quarantined (no 0-row data file is written)
    quarantine: bytes | None
    num_rows: int
    num_quarantined: int
    row_ids_sha256: str
    model_revision: str = ""
    scheduler: str = ""


def commit_shard(
    storage: Storage, layout: RunLayout, files: ShardFiles, previous: ShardState | None = None
) -> CommitMarker:
    """Write a shard's files, then its marker; returns the marker that commits the shard.

    ``previous`` is the state the caller found (None: never committed). A damaged shard whose new
    bytes are the ones its marker recorded is repaired in place; otherwise it is committed under
    the next generation. Losing the race for a marker to another writer of the same shard is not
    an error: the winner's commit is returned (its files checked) and this writer's copy removed.
    """
    previous = previous or ShardState(files.shard_id)
    data_sha = hashlib.sha256(files.data).hexdigest() if files.data is not None else None
    q_sha = hashlib.sha256(files.quarantine).hexdigest() if files.quarantine is not None else None
    old = previous.marker
    if (
        old is not None
        and old.data_sha256 == data_sha
        and (old.data_file is None) == (files.data is None)
        and old.quarantine_sha256 == q_sha
        and (old.quarantine_file is None) == (files.quarantine is None)
    ):
        # Same bytes as recorded: rewriting the damaged files makes the marker true again.
        _write_files(storage, old.data_file, old.quarantine_file, files)
        log.warning(
            "shard %s: damaged files rewritten in place with identical bytes", files.shard_id
        )
        return old
    generation = previous.generation + 1
    for _ in range(MAX_GENERATION_RACES):
        digest = data_sha or q_sha or ""  # one of them exists: a shard has rows or quarantine
        tag = generation_tag(generation, digest) if generation else None
        marker = _marker(storage, layout, files, generation, tag, data_sha, q_sha)
        _write_files(storage, marker.data_file, marker.quarantine_file, files)
        try:
            write_marker(storage, layout, marker)
            return marker
        except CommitConflictError:
            pass
        winner = _checked(storage, layout, files.shard_id, generation, listing=None)
        if winner.marker is not None and winner.marker.same_content(marker):
            return winner.marker  # the same bytes, committed by a twin run (another part size)
        if generation and winner.marker is not None:
            _remove_own_copy(storage, marker, winner.marker)
        if winner.committed:
            assert winner.marker is not None
            return winner.marker
        if generation == 0:
            # A different generation 0 won, and our write to the same keys just replaced its
            # files: it no longer checks out. Commit our bytes as the next generation.
            log.warning(
                "shard %s: another run committed different bytes for it at the same time; "
                "committing this run's bytes as generation 1",
                files.shard_id,
            )
        generation += 1
    raise StorageError(
        f"shard {files.shard_id}: lost {MAX_GENERATION_RACES} races in a row to commit it under "
        f"{storage.uri(layout.commits)}; other runs keep committing it with damaged files"
    )


def _marker(
    storage: Storage,
    layout: RunLayout,
    files: ShardFiles,
    generation: int,
    tag: str | None,
    data_sha: str | None,
    q_sha: str | None,
) -> CommitMarker:
    remote = not storage.is_local
    return CommitMarker(
        shard_id=files.shard_id,
        generation=generation,
        data_file=layout.data_file(files.shard_id, tag) if files.data is not None else None,
        quarantine_file=(
            layout.quarantine_file(files.shard_id, tag) if files.quarantine is not None else None
        ),
        num_rows=files.num_rows,
        num_quarantined=files.num_quarantined,
        data_bytes=len(files.data) if files.data is not None else 0,
        data_sha256=data_sha,
        data_etag=content_etag(files.data) if remote and files.data is not None else None,
        quarantine_bytes=len(files.quarantine) if files.quarantine is not None else None,
        quarantine_sha256=q_sha,
        quarantine_etag=(
            content_etag(files.quarantine) if remote and files.quarantine is not None else None
        ),
        model_revision=files.model_revision,
        scheduler=files.scheduler,
        row_ids_sha256=files.row_ids_sha256,
    )


def _write_files(
    storage: Storage, data_key: str | None, quarantine_key: str | None, files: ShardFiles
) -> None:
    if data_key is not None and files.data is not None:
        storage.write_bytes(data_key, files.data)
    if quarantine_key is not None and files.quarantine is not None:
        storage.write_bytes(quarantine_key, files.quarantine)


def _remove_own_copy(storage: Storage, mine: CommitMarker, winner: CommitMarker) -> None:
    # Content-addressed keys: ours differ from the winner's only if our bytes differ.
    for key, theirs in (
        (mine.data_file, winner.data_file),
        (mine.quarantine_file, winner.quarantine_file),
    ):
        if key and key != theirs:
            storage.delete(key)
