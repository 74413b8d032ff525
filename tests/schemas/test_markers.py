"""The commit marker: a deterministic, versioned JSON record of one committed shard."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from augflow.schemas.markers import MARKER_FORMAT, CommitMarker


def _marker(**over: object) -> CommitMarker:
    fields: dict[str, object] = {
        "shard_id": "abc",
        "data_file": "runs/0123456789abcdef/shards/abc.parquet",
        "num_rows": 3,
        "num_quarantined": 1,
        "data_bytes": 2048,
        "row_ids_sha256": "f" * 64,
    }
    fields.update(over)
    return CommitMarker.model_validate(fields)


def test_round_trips_through_json_with_its_format_version() -> None:
    marker = _marker(quarantine_file="runs/0123456789abcdef/quarantine/abc.parquet")
    data = marker.to_json()
    assert data["format_version"] == MARKER_FORMAT == 2
    assert CommitMarker.model_validate(json.loads(json.dumps(data))) == marker


def test_same_shard_gives_identical_bytes() -> None:
    # A retried commit must find the same bytes, so nothing time- or host-dependent may be in it.
    a, b = _marker().to_json(), _marker().to_json()
    assert json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)
    assert set(a) == {
        "format_version",
        "shard_id",
        "data_file",
        "quarantine_file",
        "num_rows",
        "num_quarantined",
        "data_bytes",
        "generation",
        "data_sha256",
        "data_etag",
        "quarantine_bytes",
        "quarantine_sha256",
        "quarantine_etag",
        "model_revision",
        "scheduler",
        "row_ids_sha256",
    }


def test_unknown_format_and_negative_counts_are_refused() -> None:
    with pytest.raises(ValidationError, match="format_version"):
        _marker(format_version=3)
    with pytest.raises(ValidationError, match="generation"):
        _marker(generation=-1)
    with pytest.raises(ValidationError, match="num_rows"):
        _marker(num_rows=-1)
    with pytest.raises(ValidationError, match="row_ids_sha256"):
        CommitMarker.model_validate(
            {k: v for k, v in _marker().to_json().items() if k != "row_ids_sha256"}
        )


def test_extra_keys_from_newer_writers_are_ignored_and_the_marker_is_frozen() -> None:
    marker = CommitMarker.model_validate({**_marker().to_json(), "written_by": "future"})
    assert marker == _marker()
    with pytest.raises(ValidationError):
        marker.num_rows = 5


def test_format_1_markers_read_back_and_keep_their_bytes() -> None:
    old = {k: v for k, v in _marker().to_json().items()} | {"format_version": 1}
    for name in (
        "generation",
        "data_sha256",
        "data_etag",
        "quarantine_bytes",
        "quarantine_sha256",
        "quarantine_etag",
    ):
        old.pop(name)
    marker = CommitMarker.model_validate(old)
    assert marker.generation == 0 and marker.data_sha256 is None
    assert marker.to_json() == old
    # what a format-1 marker can vouch for: the data file's size, nothing about the quarantine
    (data,) = marker.files()
    assert (data.key, data.bytes, data.sha256) == (marker.data_file, 2048, None)


def test_files_and_same_content_ignore_etags() -> None:
    a = _marker(
        quarantine_file="q.parquet", quarantine_bytes=10, data_sha256="1" * 64, data_etag="e1"
    )
    assert [f.key for f in a.files()] == [a.data_file, "q.parquet"]
    # ETags depend on the writer's multipart part size, not on the bytes
    assert a.same_content(a.model_copy(update={"data_etag": "e2-3"}))
    assert not a.same_content(a.model_copy(update={"data_sha256": "2" * 64}))
