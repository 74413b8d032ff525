"""Commit markers on a real local output root: exclusive creation, reading back, finding committed
shards, and detecting and recommitting damaged ones without ever overwriting a marker."""

from __future__ import annotations

import hashlib
import logging
import threading
from pathlib import Path

import pyarrow as pa
import pytest

from augflow.schemas.errors import CommitConflictError, StorageError
from augflow.schemas.markers import CommitMarker
from augflow.tasks import commits
from augflow.tasks.commits import (
    ShardFiles,
    carried_results,
    commit_shard,
    committed_results,
    read_marker,
    shard_state,
    write_marker,
)
from augflow.tasks.layout import RunLayout
from augflow.tasks.storage import Storage, parquet_bytes

HASH = "fedcba9876543210" * 4


def _files(shard_id: str, rows: int = 4, salt: str = "", quarantined: int = 0) -> ShardFiles:
    ids = [f"{shard_id}-{i}{salt}" for i in range(rows)]
    data = parquet_bytes(pa.table({"row_id": ids, "source_id": ids}))
    q_ids = [f"{shard_id}-q{i}" for i in range(quarantined)]
    quarantine = (
        parquet_bytes(pa.table({"row_id": q_ids, "source_id": q_ids})) if quarantined else None
    )
    return ShardFiles(
        shard_id=shard_id,
        data=data,
        quarantine=quarantine,
        num_rows=rows,
        num_quarantined=quarantined,
        row_ids_sha256=hashlib.sha256("".join(ids).encode()).hexdigest(),
        model_revision="sha256:m",
        scheduler="ddim",
    )


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


@pytest.fixture
def layout() -> RunLayout:
    return RunLayout(HASH)


def _path(storage: Storage, key: str) -> Path:
    return Path(storage.path(key))


# --- markers as records --------------------------------------------------------------------------


def test_write_then_read_back(storage: Storage, layout: RunLayout, tmp_path: Path) -> None:
    assert write_marker(storage, layout, _marker("s1")) is True
    assert (tmp_path / "out" / layout.commit_marker("s1")).is_file()
    assert read_marker(storage, layout.commit_marker("s1")) == _marker("s1")


def test_a_retried_commit_is_recognised_and_a_different_one_conflicts(
    storage: Storage, layout: RunLayout
) -> None:
    assert write_marker(storage, layout, _marker("s1")) is True
    assert write_marker(storage, layout, _marker("s1")) is False  # same bytes: already done
    with pytest.raises(CommitConflictError):
        write_marker(storage, layout, _marker("s1", rows=5))
    assert read_marker(storage, layout.commit_marker("s1")).num_rows == 4  # never overwritten


def test_a_missing_marker_means_not_committed(storage: Storage, layout: RunLayout) -> None:
    with pytest.raises(FileNotFoundError):
        read_marker(storage, layout.commit_marker("nope"))
    state = shard_state(storage, layout, "nope")
    assert (state.generation, state.marker, state.damage, state.committed) == (
        -1,
        None,
        None,
        False,
    )


def test_a_malformed_marker_names_the_file_the_field_and_the_fix(
    storage: Storage, layout: RunLayout
) -> None:
    key = layout.commit_marker("bad")
    data = _marker("bad").to_json()
    data["num_rows"] = -3
    storage.write_json(key, data)
    with pytest.raises(StorageError) as err:
        read_marker(storage, key)
    text = str(err.value)
    assert storage.uri(key) in text and "`num_rows`" in text and "delete it" in text


# --- committing and finding committed shards -----------------------------------------------------


def test_a_commit_records_sizes_and_digests_and_is_found_again(
    storage: Storage, layout: RunLayout
) -> None:
    files = _files("s1", quarantined=2)
    marker = commit_shard(storage, layout, files)
    assert marker.generation == 0 and marker.format_version == 2
    assert marker.data_file == layout.data_file("s1")
    assert marker.quarantine_file == layout.quarantine_file("s1")
    assert marker.data_bytes == len(files.data)
    assert marker.data_sha256 == hashlib.sha256(files.data).hexdigest()
    assert marker.quarantine_sha256 == hashlib.sha256(files.quarantine or b"").hexdigest()
    assert marker.data_etag is None  # local roots have no ETags to compare
    assert _path(storage, marker.data_file).read_bytes() == files.data
    assert read_marker(storage, layout.commit_marker("s1")) == marker
    assert shard_state(storage, layout, "s1").committed
    # committing the same bytes again (a retry, a twin run) changes nothing
    assert commit_shard(storage, layout, files) == marker


def test_committed_results_lists_only_sound_committed_shards(
    storage: Storage, layout: RunLayout
) -> None:
    for sid in ("s1", "s3"):
        commit_shard(storage, layout, _files(sid, rows=int(sid[1])))
    # A shard of another request is not ours.
    commit_shard(storage, RunLayout("1" * 64), _files("s2"))
    done = committed_results(storage, layout, ["s1", "s2", "s3", "s4"])
    assert sorted(done) == ["s1", "s3"]
    assert done["s3"].status == "skipped" and done["s3"].num_rows == 3
    assert done["s1"].data_file == layout.data_file("s1")
    assert committed_results(storage, RunLayout("2" * 64), ["s1"]) == {}  # no commits folder


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:-7])


def _flip_a_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.mark.parametrize(
    ("damage", "which", "expect"),
    [
        (_truncate, "data", "bytes where its commit marker recorded"),
        (_flip_a_byte, "data", "sha256"),
        (Path.unlink, "data", "is missing"),
        (_truncate, "quarantine", "bytes where its commit marker recorded"),
        (_flip_a_byte, "quarantine", "sha256"),
    ],
    ids=["truncated", "same-size-flip", "deleted", "quarantine-truncated", "quarantine-flip"],
)
def test_damaged_files_are_detected_logged_by_shard_and_not_reused(
    storage: Storage,
    layout: RunLayout,
    caplog: pytest.LogCaptureFixture,
    damage,
    which: str,
    expect: str,
) -> None:
    good = commit_shard(storage, layout, _files("good", quarantined=1))
    bad = commit_shard(storage, layout, _files("bad", quarantined=1))
    key = bad.data_file if which == "data" else bad.quarantine_file
    assert key is not None
    damage(_path(storage, key))
    with caplog.at_level(logging.WARNING, logger=commits.__name__):
        done = committed_results(storage, layout, ["good", "bad"])
    assert list(done) == ["good"] and done["good"].data_file == good.data_file
    warning = "\n".join(r.getMessage() for r in caplog.records)
    assert "shard bad is damaged" in warning and storage.uri(key) in warning and expect in warning
    state = shard_state(storage, layout, "bad")  # a worker's view agrees
    assert not state.committed and state.marker == bad and expect in (state.damage or "")


def test_identical_bytes_repair_the_damaged_file_in_place(
    storage: Storage, layout: RunLayout
) -> None:
    files = _files("s1")
    marker = commit_shard(storage, layout, files)
    _truncate(_path(storage, marker.data_file))
    state = shard_state(storage, layout, "s1")
    assert state.damage
    again = commit_shard(storage, layout, files, previous=state)
    # Same marker (nothing new committed), same key, now holding the recorded bytes: a registered
    # version listing that key is readable again.
    assert again == marker
    assert _path(storage, marker.data_file).read_bytes() == files.data
    assert storage.list(layout.commits) == [layout.commit_marker("s1")]
    assert shard_state(storage, layout, "s1").committed


def test_different_bytes_commit_the_next_generation_and_keep_the_old_marker(
    storage: Storage, layout: RunLayout
) -> None:
    first = commit_shard(storage, layout, _files("s1"))
    old_marker_bytes = _path(storage, layout.commit_marker("s1")).read_bytes()
    _truncate(_path(storage, first.data_file))
    recomputed = _files("s1", salt="x")  # e.g. recomputed on other hardware
    second = commit_shard(storage, layout, recomputed, previous=shard_state(storage, layout, "s1"))
    assert second.generation == 1
    assert second.data_file != first.data_file and "/g1-" in second.data_file
    assert _path(storage, second.data_file).read_bytes() == recomputed.data
    assert _path(storage, layout.commit_marker("s1")).read_bytes() == old_marker_bytes
    state = shard_state(storage, layout, "s1")
    assert state.committed and state.generation == 1 and state.marker == second
    done = committed_results(storage, layout, ["s1"])
    assert done["s1"].data_file == second.data_file and done["s1"].num_rows == 4


def test_an_unreadable_marker_is_superseded_not_overwritten(
    storage: Storage, layout: RunLayout
) -> None:
    storage.write_bytes(layout.commit_marker("s1"), b"{ not json")
    state = shard_state(storage, layout, "s1")
    assert (
        state.generation == 0 and state.marker is None and "not valid JSON" in (state.damage or "")
    )
    assert committed_results(storage, layout, ["s1"]) == {}
    marker = commit_shard(storage, layout, _files("s1"), previous=state)
    assert marker.generation == 1
    assert storage.read_bytes(layout.commit_marker("s1")) == b"{ not json"
    assert shard_state(storage, layout, "s1").committed


def test_format_1_markers_of_old_roots_are_checked_by_size(
    storage: Storage, layout: RunLayout
) -> None:
    files = _files("old")
    storage.write_bytes(layout.data_file("old"), files.data)
    legacy = {  # what augflow wrote before markers had digests
        "format_version": 1,
        "shard_id": "old",
        "data_file": layout.data_file("old"),
        "quarantine_file": None,
        "num_rows": 4,
        "num_quarantined": 0,
        "data_bytes": len(files.data),
        "model_revision": "sha256:m",
        "scheduler": "ddim",
        "row_ids_sha256": files.row_ids_sha256,
    }
    storage.create_json_exclusive(layout.commit_marker("old"), legacy)
    marker = read_marker(storage, layout.commit_marker("old"))
    assert marker.to_json() == legacy  # read back and written again, it keeps its bytes
    assert list(committed_results(storage, layout, ["old"])) == ["old"]
    _truncate(_path(storage, layout.data_file("old")))
    state = shard_state(storage, layout, "old")
    assert not state.committed and "bytes where its commit marker recorded" in (state.damage or "")
    # Nothing recorded to compare the new bytes with: always a new generation.
    assert commit_shard(storage, layout, files, previous=state).generation == 1


def test_racing_repairs_with_different_bytes_commit_exactly_one_generation(
    storage: Storage, layout: RunLayout
) -> None:
    first = commit_shard(storage, layout, _files("s1"))
    _truncate(_path(storage, first.data_file))
    state = shard_state(storage, layout, "s1")
    candidates = [_files("s1", salt=f"-writer{i}") for i in range(4)]
    barrier = threading.Barrier(len(candidates))
    out: list[CommitMarker | BaseException] = [RuntimeError("not run")] * len(candidates)

    def go(i: int) -> None:
        barrier.wait()
        try:
            out[i] = commit_shard(storage, layout, candidates[i], previous=state)
        except BaseException as exc:
            out[i] = exc

    threads = [threading.Thread(target=go, args=(i,)) for i in range(len(candidates))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(isinstance(m, CommitMarker) for m in out), out
    winners = {m.data_file for m in out if isinstance(m, CommitMarker)}
    assert len(winners) == 1  # every writer ends up with the one committed generation
    (winner,) = winners
    assert set(storage.list(layout.commits)) == {
        layout.commit_marker("s1"),
        layout.commit_marker("s1", 1),
    }
    final = shard_state(storage, layout, "s1")
    assert final.committed and final.generation == 1 and final.marker is not None
    assert final.marker.data_file == winner
    # the losers removed their own copies: only the winner's generation folder is left
    assert [k for k in storage.info_tree(layout.shards) if "/g1-" in k] == [winner]


def test_a_first_commit_racing_different_bytes_ends_consistent(
    storage: Storage, layout: RunLayout
) -> None:
    # Two runs computed shard s1 with different bytes (different hardware). The second writes its
    # data over the first's file, then loses the marker race: its commit must not leave a marker
    # whose file holds other bytes.
    a, b = _files("s1", salt="-a"), _files("s1", salt="-b")
    commit_shard(storage, layout, a)
    marker = commit_shard(storage, layout, b)
    final = shard_state(storage, layout, "s1")
    assert final.committed and final.marker == marker
    assert _path(storage, marker.data_file).read_bytes() == b.data


def test_carried_results_drop_damaged_shards(storage: Storage, layout: RunLayout) -> None:
    kept = commit_shard(storage, layout, _files("kept"))
    hurt = commit_shard(storage, layout, _files("hurt"))
    _flip_a_byte(_path(storage, hurt.data_file))
    carried = carried_results(storage, layout, ["kept", "hurt", "never"])
    assert [(c.shard_id, c.status, c.data_file) for c in carried] == [
        ("kept", "carried", kept.data_file)
    ]
