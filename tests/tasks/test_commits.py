"""Commit markers on a real local output root: exclusive creation, reading back, finding
committed shards."""

from __future__ import annotations

from pathlib import Path

import pytest

from augflow.schemas.errors import CommitConflictError, StorageError
from augflow.schemas.markers import CommitMarker
from augflow.tasks.commits import committed_results, read_marker, write_marker
from augflow.tasks.layout import RunLayout
from augflow.tasks.storage import Storage

HASH = "fedcba9876543210" * 4


def _marker(shard_id: str, rows: int = 4) -> CommitMarker:
    layout = RunLayout(HASH)
    return CommitMarker(
        shard_id=shard_id,
        data_file=layout.data_file(shard_id),
        num_rows=rows,
        num_quarantined=0,
        data_bytes=123,
        model_revision="sha256:m",
        scheduler="ddim",
        row_ids_sha256="a" * 64,
    )


@pytest.fixture
def storage(tmp_path: Path) -> Storage:
    return Storage(str(tmp_path / "out"))


def test_write_then_read_back(storage: Storage, tmp_path: Path) -> None:
    layout = RunLayout(HASH)
    assert write_marker(storage, layout, _marker("s1")) is True
    assert (tmp_path / "out" / layout.commit_marker("s1")).is_file()
    assert read_marker(storage, layout.commit_marker("s1")) == _marker("s1")


def test_a_retried_commit_is_recognised_and_a_different_one_conflicts(storage: Storage) -> None:
    layout = RunLayout(HASH)
    assert write_marker(storage, layout, _marker("s1")) is True
    assert write_marker(storage, layout, _marker("s1")) is False  # same bytes: already done
    with pytest.raises(CommitConflictError):
        write_marker(storage, layout, _marker("s1", rows=5))
    assert read_marker(storage, layout.commit_marker("s1")).num_rows == 4  # never overwritten


def test_a_missing_marker_means_not_committed(storage: Storage) -> None:
    with pytest.raises(FileNotFoundError):
        read_marker(storage, RunLayout(HASH).commit_marker("nope"))


def test_a_malformed_marker_names_the_file_the_field_and_the_fix(storage: Storage) -> None:
    key = RunLayout(HASH).commit_marker("bad")
    data = _marker("bad").to_json()
    data["num_rows"] = -3
    storage.write_json(key, data)
    with pytest.raises(StorageError) as err:
        read_marker(storage, key)
    text = str(err.value)
    assert storage.uri(key) in text and "`num_rows`" in text and "delete it" in text


def test_committed_results_lists_only_committed_shards_as_skipped(storage: Storage) -> None:
    layout = RunLayout(HASH)
    for sid in ("s1", "s3"):
        write_marker(storage, layout, _marker(sid, rows=int(sid[1])))
    # A marker of another request is not ours.
    write_marker(storage, RunLayout("1" * 64), _marker("s2"))
    done = committed_results(storage, layout, ["s1", "s2", "s3", "s4"])
    assert sorted(done) == ["s1", "s3"]
    assert done["s3"].status == "skipped" and done["s3"].num_rows == 3
    assert done["s1"].data_file == layout.data_file("s1")
    assert committed_results(storage, RunLayout("2" * 64), ["s1"]) == {}  # no commits folder
