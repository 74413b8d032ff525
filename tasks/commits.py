"""Commit markers: how a shard becomes committed, and how committed shards are found again.

A shard's data (and quarantine) files are written first; the marker is created last, exclusively,
so its presence means the files are complete. Markers are read back on a re-run (the shard is
skipped) and by an incremental refresh (the shard is carried into the new version).
"""

from __future__ import annotations

from collections.abc import Iterable

from pydantic import ValidationError

from augflow.schemas.errors import StorageError
from augflow.schemas.markers import CommitMarker
from augflow.schemas.records import ShardResult
from augflow.tasks.layout import RunLayout
from augflow.tasks.storage import Storage


def read_marker(storage: Storage, key: str) -> CommitMarker:
    """The marker at ``key``; FileNotFoundError when the shard is not committed."""
    data = storage.read_json(key)
    try:
        return CommitMarker.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "marker"
        raise StorageError(
            f"commit marker {storage.uri(key)} is malformed at `{where}`: {first['msg']}; "
            "delete it to recompute the shard"
        ) from None


def write_marker(storage: Storage, layout: RunLayout, marker: CommitMarker) -> bool:
    """Commit a shard: create its marker exclusively. True when this call created it."""
    return storage.create_json_exclusive(layout.commit_marker(marker.shard_id), marker.to_json())


def committed_results(
    storage: Storage, layout: RunLayout, shard_ids: Iterable[str]
) -> dict[str, ShardResult]:
    """Results of the shards among ``shard_ids`` that are committed (one listing of the markers)."""
    present = set(storage.list(layout.commits))
    done: dict[str, ShardResult] = {}
    for sid in shard_ids:
        key = layout.commit_marker(sid)
        if key in present:
            done[sid] = ShardResult.from_marker(read_marker(storage, key), "skipped")
    return done
