"""The registry on the real local filesystem through Storage: atomic, immutable versions."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta

import pytest

from augflow.schemas import parse_request
from augflow.schemas.errors import (
    CommitConflictError,
    DatasetRefError,
    QualityGateError,
    VersionNotFoundError,
)
from augflow.schemas.names import parse_ref
from augflow.schemas.quality import QualitySummary
from augflow.schemas.records import ShardResult
from augflow.schemas.registry import RegistryEntry
from augflow.tasks.layout import registry_entry as entry_key
from augflow.tasks.register import (
    build_entry,
    file_uris,
    get_version,
    list_datasets,
    list_versions,
    register_version,
)
from augflow.tasks.storage import Storage

T0 = datetime(2026, 1, 1, tzinfo=UTC)


@pytest.fixture
def storage(tmp_path) -> Storage:
    return Storage(str(tmp_path / "out"))


def _request(dataset: str = "cats", seed: int = 0):
    return parse_request(
        {
            "dataset": dataset,
            "operation": {"kind": "img2img", "variants": 2},
            "inputs": "/in",
            "model": {"id": "tiny", "revision": "abc123", "scheduler": "ddim"},
            "seed": seed,
        }
    )


def _results(n: int = 2) -> list[ShardResult]:
    # Listed out of order on purpose: the entry must not depend on finishing order.
    return [
        ShardResult(
            shard_id=f"s{i}",
            data_file=f"runs/h/shards/{i:05d}.parquet",
            quarantine_file=None,
            num_rows=10,
            num_quarantined=0,
            data_bytes=1000 + i,
            seconds=1.0,
            status="computed",
        )
        for i in reversed(range(n))
    ]


def _entry(
    storage: Storage,
    version: str = "a1b2c3d4e5f6",
    *,
    dataset: str = "cats",
    seed: int = 0,
    created_at: datetime = T0,
    passed: bool = True,
    n: int = 2,
) -> RegistryEntry:
    checks = QualitySummary(
        passed=passed,
        failed=[] if passed else ["has_nan: 1 of 2 rows"],
        report_key="runs/h/quality/report.md",
    )
    return build_entry(
        storage, _request(dataset, seed), version, _results(n), checks, created_at=created_at
    )


def test_create_then_identical_reregister(storage: Storage) -> None:
    entry = _entry(storage)
    first = register_version(storage, entry)
    assert first.created
    assert first.uri == storage.uri("registry/cats/versions/a1b2c3d4e5f6.json")
    again = register_version(storage, entry)
    assert not again.created
    # A retry later (new timestamp, same content) is also already registered, and the stored
    # entry keeps its original timestamp.
    retry = register_version(storage, _entry(storage, created_at=T0 + timedelta(hours=1)))
    assert not retry.created
    assert retry.entry.created_at == T0


def test_conflicting_entry_at_same_version_raises(storage: Storage) -> None:
    register_version(storage, _entry(storage))
    with pytest.raises(CommitConflictError, match="cats@a1b2c3d4e5f6 is already registered"):
        register_version(storage, _entry(storage, seed=7))
    with pytest.raises(CommitConflictError):
        register_version(storage, _entry(storage, n=3))
    assert get_version(storage, "cats", "a1b2c3d4e5f6").request_hash == _request().request_hash


def test_failed_checks_are_never_registered(storage: Storage) -> None:
    with pytest.raises(QualityGateError, match="has_nan"):
        register_version(storage, _entry(storage, passed=False))
    assert not storage.exists(entry_key("cats", "a1b2c3d4e5f6"))


def test_racing_registrations_publish_exactly_once(storage: Storage) -> None:
    n = 8
    barrier = threading.Barrier(n)
    outcomes, errors = [], []

    def worker(i: int) -> None:
        # Different timestamps make the bytes differ, so the loser goes through the
        # conflict-then-compare path, not just the identical-bytes shortcut.
        entry = _entry(storage, created_at=T0 + timedelta(seconds=i))
        barrier.wait()
        try:
            outcomes.append(register_version(storage, entry))
        except Exception as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert sum(o.created for o in outcomes) == 1
    assert sum(not o.created for o in outcomes) == n - 1
    assert [k for k in storage.list("registry/cats/versions")] == [
        "registry/cats/versions/a1b2c3d4e5f6.json"
    ]


def test_latest_resolution_and_listing(storage: Storage) -> None:
    register_version(storage, _entry(storage, "v1", seed=1, created_at=T0))
    register_version(storage, _entry(storage, "v2", seed=2, created_at=T0 + timedelta(days=1)))
    register_version(storage, _entry(storage, "v3", seed=3, created_at=T0 + timedelta(days=2)))
    register_version(storage, _entry(storage, "d1", dataset="dogs", n=1))
    assert get_version(storage, "cats", "latest").version == "v3"
    assert get_version(storage, "cats").version == "v3"
    assert get_version(storage, "cats", "v2").request_hash == _request(seed=2).request_hash
    assert [e.version for e in list_versions(storage, "cats")] == ["v1", "v2", "v3"]
    summaries = list_datasets(storage)
    assert [(s.name, s.num_versions, s.latest_version, s.latest_num_rows) for s in summaries] == [
        ("cats", 3, "v3", 20),
        ("dogs", 1, "d1", 10),
    ]


def test_latest_tie_broken_by_version(storage: Storage) -> None:
    register_version(storage, _entry(storage, "aaa", seed=1))
    register_version(storage, _entry(storage, "bbb", seed=2))
    assert get_version(storage, "cats", "latest").version == "bbb"


def test_version_not_found_messages(storage: Storage) -> None:
    with pytest.raises(
        VersionNotFoundError,
        match=r"no dataset 'cats' is registered under file://.*augflow datasets list",
    ):
        get_version(storage, "cats", "latest")
    register_version(storage, _entry(storage, "v1", seed=1))
    register_version(storage, _entry(storage, "v2", seed=2, created_at=T0 + timedelta(days=1)))
    with pytest.raises(
        VersionNotFoundError, match="dataset 'cats' has no version 'abc'; registered: v1, v2"
    ):
        get_version(storage, "cats", "abc")
    with pytest.raises(VersionNotFoundError, match=r"no dataset 'dogs'.*registered datasets: cats"):
        get_version(storage, "dogs", "v1")


def test_entry_round_trip(storage: Storage) -> None:
    entry = _entry(storage)
    outcome = register_version(storage, entry)
    back = get_version(storage, "cats", entry.version)
    assert back == outcome.entry == entry.model_copy(update={"sequence": 1})
    assert back.created_at.tzinfo is not None
    raw = storage.read_json(entry_key("cats", entry.version))
    assert raw["created_at"].endswith("Z")
    assert [f["key"] for f in raw["files"]] == sorted(f["key"] for f in raw["files"])
    assert raw["request"]["model"] == {"id": "tiny", "revision": "abc123", "scheduler": "ddim"}
    assert raw["model"] == {"id": "tiny", "revision": "abc123", "scheduler": "ddim"}
    assert raw["num_rows"] == 20
    assert raw["code_version"].startswith(("augflow", "unknown"))
    assert file_uris(storage, back) == [
        storage.uri(f"runs/h/shards/{i:05d}.parquet") for i in range(2)
    ]
    # keys only: a copied or moved root stays readable
    assert "uri" not in raw and all("uri" not in f for f in raw["files"])
    assert raw["format_version"] == 2 and raw["quality"]["report_key"] == "runs/h/quality/report.md"


def test_parse_ref() -> None:
    assert parse_ref("cats@v1") == ("cats", "v1")
    assert parse_ref("cats") == ("cats", "latest")
    assert parse_ref("cats@latest") == ("cats", "latest")
    with pytest.raises(DatasetRefError, match="nothing after '@'"):
        parse_ref("cats@")
    with pytest.raises(DatasetRefError, match="no dataset name"):
        parse_ref("@v1")
    with pytest.raises(DatasetRefError, match="'Cats' is not a valid dataset name in 'Cats@v1'"):
        parse_ref("Cats@v1")
    with pytest.raises(DatasetRefError, match="not a version"):
        parse_ref("cats@../x")
    with pytest.raises(ValueError):  # also a ValueError, for callers that validate input
        parse_ref("cats@a@b")


def test_version_strings_cannot_escape_the_registry(storage: Storage) -> None:
    with pytest.raises(ValueError):
        _entry(storage, "../../x")
    with pytest.raises(ValueError):
        _entry(storage, "latest")
