"""Registry entries: root-relative keys, a format version, and format 1 entries (absolute URIs
and a ``checks`` block) read and converted."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from augflow.schemas.quality import QualitySummary
from augflow.schemas.registry import ENTRY_FORMAT, FileRef, ModelInfo, RegistryEntry

H16 = "0123456789abcdef"


def _entry(**over: Any) -> RegistryEntry:
    fields: dict[str, Any] = {
        "name": "cats",
        "version": "abc123",
        "created_at": datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC),
        "files": [FileRef(key=f"runs/{H16}/shards/s1.parquet", rows=4, bytes=100)],
        "num_rows": 4,
        "num_quarantined": 0,
        "request": {"dataset": "cats"},
        "request_hash": H16 * 4,
        "code_version": "augflow 0.1.0",
        "model": ModelInfo(id="m", revision="sha256:x", scheduler="ddim"),
        "quality": QualitySummary(passed=True, report_key=f"runs/{H16}/v-abc123/quality/report.md"),
    }
    fields.update(over)
    return RegistryEntry(**fields)


def _format1(root: str) -> dict[str, Any]:
    """An entry as format 1 wrote it: absolute URIs next to every key, the verdict in `checks`."""
    return {
        "name": "cats",
        "version": "abc123",
        "created_at": "2026-01-02T03:04:05Z",
        "uri": root,
        "files": [
            {
                "uri": f"{root}/runs/{H16}/shards/s1.parquet",
                "key": f"runs/{H16}/shards/s1.parquet",
                "rows": 4,
                "bytes": 100,
            }
        ],
        "quarantine_files": [
            {
                "uri": f"{root}/runs/{H16}/quarantine/s1.parquet",
                "key": f"runs/{H16}/quarantine/s1.parquet",
                "rows": 1,
                "bytes": 50,
            }
        ],
        "num_rows": 4,
        "num_quarantined": 1,
        "request": {"dataset": "cats"},
        "request_hash": H16 * 4,
        "code_version": "augflow 0.1.0",
        "model": {"id": "m", "revision": "sha256:x", "scheduler": "ddim"},
        "checks": {
            "passed": True,
            "failed": [],
            "report_uri": f"{root}/runs/{H16}/v-abc123/quality/report.md",
        },
    }


@pytest.mark.parametrize("root", ["file:///data/aug", "s3://bucket/some/prefix"])
def test_format_1_entry_is_read_as_root_relative_keys(root: str) -> None:
    entry = RegistryEntry.model_validate(_format1(root))
    assert entry.format_version == ENTRY_FORMAT == 2
    assert entry.file_keys == [f"runs/{H16}/shards/s1.parquet"]
    assert [f.key for f in entry.quarantine_files] == [f"runs/{H16}/quarantine/s1.parquet"]
    assert entry.quality == QualitySummary(
        passed=True, failed=[], report_key=f"runs/{H16}/v-abc123/quality/report.md"
    )
    dumped = entry.model_dump(mode="json")
    assert "uri" not in dumped and "checks" not in dumped
    assert root not in json.dumps(dumped)  # nothing absolute survives the conversion
    # Written back, it reads as the same entry.
    assert RegistryEntry.model_validate(dumped) == entry


def test_format_1_failed_checks_are_kept() -> None:
    data = _format1("file:///data/aug")
    data["checks"] = {**data["checks"], "passed": False, "failed": ["row_count: 3 != 4"]}
    entry = RegistryEntry.model_validate(data)
    assert not entry.quality.passed and entry.quality.failed == ["row_count: 3 != 4"]


def test_format_1_entry_through_the_registry_reader(tmp_path: Path) -> None:
    """A format-1 file left in an output root resolves with the current reader."""
    from augflow.tasks.register import get_version
    from augflow.tasks.storage import Storage

    storage = Storage(str(tmp_path))
    old_root = "file:///somewhere/else/the/root/was"  # the root was moved since it was written
    storage.write_json("registry/cats/versions/abc123.json", _format1(old_root))
    entry = get_version(storage, "cats", "latest")
    assert entry.ref == "cats@abc123"
    assert storage.uri(entry.files[0].key) == f"{storage.root}/runs/{H16}/shards/s1.parquet"


def test_format_2_round_trips_and_keeps_its_version() -> None:
    entry = _entry()
    data = json.loads(entry.model_dump_json())
    assert data["format_version"] == 2 and data["quality"]["report_key"].startswith("runs/")
    assert RegistryEntry.model_validate(data) == entry


def test_created_at_must_carry_a_timezone_and_is_kept_in_utc() -> None:
    with pytest.raises(ValidationError, match="timezone"):
        _entry(created_at=datetime(2026, 1, 1))
    local = datetime(2026, 1, 1, 12, tzinfo=timezone(timedelta(hours=2)))
    assert _entry(created_at=local).created_at == datetime(2026, 1, 1, 10, tzinfo=UTC)
    assert _entry(created_at=local).created_at.utcoffset() == timedelta(0)


@pytest.mark.parametrize(
    ("over", "field"),
    [
        ({"name": "../etc"}, "name"),
        ({"version": "../../x"}, "version"),
        ({"version": "latest"}, "version"),
        ({"num_rows": -1}, "num_rows"),
        ({"extra": 1}, "extra"),
    ],
)
def test_bad_fields_are_refused(over: dict[str, Any], field: str) -> None:
    with pytest.raises(ValidationError, match=field):
        _entry(**over)


def test_same_content_ignores_only_the_timestamp() -> None:
    a = _entry()
    assert a.same_content(_entry(created_at=a.created_at + timedelta(hours=1)))
    assert not a.same_content(_entry(request_hash="f" * 64))
    assert not a.same_content(_entry(files=[]))
    assert not a.same_content(_entry(version="other"))
    assert a.ref == "cats@abc123"
