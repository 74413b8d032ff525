"""`@latest` is total: versions are ordered by the sequence number they claimed when published,
whatever their created_at says, and concurrent registrations (threads, processes, two machines
sharing a bucket) never share a number or leave `latest` ambiguous."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from augflow.schemas import parse_request
from augflow.schemas.quality import QualitySummary
from augflow.schemas.records import ShardResult
from augflow.schemas.registry import RegistryEntry
from augflow.tasks import layout
from augflow.tasks.register import build_entry, get_version, list_versions, register_version
from augflow.tasks.storage import Storage

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def _entry(
    storage: Storage, version: str, created_at: datetime = T0, seed: int = 0
) -> RegistryEntry:
    request = parse_request(
        {
            "dataset": "cats",
            "operation": {"kind": "generate", "num_images": 1},
            "model": {"id": "tiny"},
            "seed": seed,
        }
    )
    result = ShardResult(
        shard_id=f"s-{version}",
        data_file=f"runs/h/shards/{version}.parquet",
        quarantine_file=None,
        num_rows=1,
        num_quarantined=0,
        data_bytes=10,
        seconds=0.0,
        status="computed",
    )
    quality = QualitySummary(passed=True, failed=[], report_key="runs/h/quality/report.md")
    return build_entry(storage, request, version, [result], quality, created_at=created_at)


def _assert_total_order(storage: Storage, published: list[str]) -> None:
    entries = list_versions(storage, "cats")
    sequences = [e.sequence for e in entries]
    assert sorted(e.version for e in entries) == sorted(published)
    assert sequences == sorted(sequences) and len(set(sequences)) == len(sequences)
    assert None not in sequences
    # `latest` is one version, the same on every ask, and the one holding the highest number
    latest = {get_version(storage, "cats").version for _ in range(3)}
    assert latest == {entries[-1].version}
    claims = storage.list(layout.registry_sequences("cats"))
    assert len(claims) == len(published)  # one claim per version, no gaps without a crash


@pytest.fixture
def storage(tmp_path: Path) -> Storage:
    return Storage(str(tmp_path / "out"))


def test_publication_order_wins_over_skewed_clocks(storage: Storage) -> None:
    # Machine A's clock runs an hour ahead; B registers after A but stamps an earlier time.
    register_version(storage, _entry(storage, "from-a", T0 + timedelta(hours=1), seed=1))
    register_version(storage, _entry(storage, "from-b", T0, seed=2))
    assert [(e.version, e.sequence) for e in list_versions(storage, "cats")] == [
        ("from-a", 1),
        ("from-b", 2),
    ]
    assert get_version(storage, "cats", "latest").version == "from-b"


def test_the_same_second_resolves_by_publication_not_by_name(storage: Storage) -> None:
    register_version(storage, _entry(storage, "zzz", seed=1))
    register_version(storage, _entry(storage, "aaa", seed=2))  # same created_at, smaller name
    assert get_version(storage, "cats").version == "aaa"


def test_entries_from_before_sequence_numbers_sort_first(storage: Storage) -> None:
    # An old root: an entry published by an augflow that did not claim numbers.
    old = _entry(storage, "old", T0 + timedelta(days=30), seed=1)
    storage.create_json_exclusive(
        layout.registry_entry("cats", "old"), old.model_dump(mode="json", exclude={"sequence"})
    )
    register_version(storage, _entry(storage, "new", T0, seed=2))
    assert [e.version for e in list_versions(storage, "cats")] == ["old", "new"]
    assert get_version(storage, "cats").sequence == 1


def test_a_twin_registration_of_one_version_claims_no_second_number(storage: Storage) -> None:
    entry = _entry(storage, "v1")
    first = register_version(storage, entry)
    again = register_version(storage, entry.model_copy(update={"created_at": T0 + timedelta(1)}))
    assert (first.created, again.created) == (True, False)
    assert again.entry == first.entry and first.entry.sequence == 1
    assert storage.list(layout.registry_sequences("cats")) == [layout.registry_sequence("cats", 1)]


def test_concurrent_registrations_in_threads_get_distinct_numbers(storage: Storage) -> None:
    versions = [f"t{i:02d}" for i in range(12)]
    barrier = threading.Barrier(len(versions))
    errors: list[BaseException] = []

    def go(i: int) -> None:
        barrier.wait()
        try:
            register_version(storage, _entry(storage, versions[i], seed=i))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=go, args=(i,)) for i in range(len(versions))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    _assert_total_order(storage, versions)


_REGISTER = textwrap.dedent(
    """
    import sys, time
    sys.path.insert(0, {tests!r})
    from test_register_order import _entry
    from augflow.tasks.register import register_version
    from augflow.tasks.storage import Storage

    storage = Storage({root!r})
    version, start = sys.argv[1], float(sys.argv[2])
    entry = _entry(storage, version, seed=int(version[1:]))
    time.sleep(max(0.0, start - time.time()))  # all processes go at the same instant
    print(register_version(storage, entry).entry.sequence)
    """
)


def test_concurrent_registrations_in_processes_get_distinct_numbers(
    storage: Storage, tmp_path: Path
) -> None:
    script = tmp_path / "register.py"
    script.write_text(_REGISTER.format(tests=str(Path(__file__).parent), root=storage.root))
    versions = [f"p{i:02d}" for i in range(6)]
    start = time.time() + 6  # after every interpreter has imported augflow
    procs = [
        subprocess.Popen(
            [sys.executable, str(script), v, str(start)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for v in versions
    ]
    outs = [p.communicate(timeout=120) for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[1][-2000:] for o in outs]
    numbers = sorted(int(o[0].strip()) for o in outs)
    assert numbers == list(range(1, len(versions) + 1))
    _assert_total_order(storage, versions)
    # what each process was told is what the registry holds
    by_version = {e.version: e.sequence for e in list_versions(storage, "cats")}
    assert sorted(by_version.values()) == numbers
    assert (
        json.loads(storage.read_bytes(layout.registry_sequence("cats", numbers[-1])))["version"]
        == get_version(storage, "cats").version
    )


@pytest.mark.slow
def test_concurrent_registrations_on_s3_get_distinct_numbers(s3_root: str) -> None:
    storage = Storage(s3_root)
    versions = [f"s{i:02d}" for i in range(8)]
    barrier = threading.Barrier(len(versions))
    errors: list[BaseException] = []

    def go(i: int) -> None:
        barrier.wait()
        try:
            register_version(storage, _entry(storage, versions[i], seed=i))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=go, args=(i,)) for i in range(len(versions))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    _assert_total_order(storage, versions)
