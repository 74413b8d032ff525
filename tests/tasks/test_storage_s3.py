"""The storage wrapper against a real SeaweedFS (auth on): conditional creates, lost responses,
wrong credentials, and outages."""

from __future__ import annotations

import hashlib
import os
import threading
import time
from typing import Any

import pyarrow as pa
import pytest
from faults.proxy import FaultProxy, Rule

from augflow.schemas.errors import CommitConflictError, StorageError
from augflow.tasks import credentials
from augflow.tasks.commits import ShardFiles, commit_shard, committed_results
from augflow.tasks.layout import RunLayout
from augflow.tasks.storage import Storage, content_etag, open_uri, parquet_bytes

pytestmark = pytest.mark.slow


def test_round_trip_and_listing(s3_root: str) -> None:
    s = Storage(s3_root)
    s.write_json("a/b.json", {"x": 1})
    s.write_bytes("a/c.bin", b"\x00" * 10)
    assert s.list("a") == ["a/b.json", "a/c.bin"]
    assert s.list("missing") == []
    assert s.exists("a/b.json") and not s.exists("a/zz")
    assert s.read_json("a/b.json") == {"x": 1} and s.size("a/c.bin") == 10
    with open_uri(s.uri("a/c.bin")) as fh:
        assert fh.read() == b"\x00" * 10
    s.delete("a/c.bin")
    s.delete("a/c.bin")  # deleting twice is fine
    assert s.list("a") == ["a/b.json"]


def test_racing_exclusive_creates_have_exactly_one_winner(s3_root: str) -> None:
    s = Storage(s3_root)
    for round_ in range(5):
        outcomes: list[Any] = [None] * 4
        barrier = threading.Barrier(4)

        def go(
            i: int,
            key: str = f"commit/{round_}.json",
            barrier: threading.Barrier = barrier,
            outcomes: list[Any] = outcomes,
        ) -> None:
            barrier.wait()
            try:
                outcomes[i] = s.create_json_exclusive(key, {"writer": i})
            except CommitConflictError as exc:
                outcomes[i] = exc

        threads = [threading.Thread(target=go, args=(i,)) for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        winners = [i for i, o in enumerate(outcomes) if o is True]
        assert len(winners) == 1, outcomes
        assert all(isinstance(o, CommitConflictError) for o in outcomes if o is not True)
        assert s.read_json(f"commit/{round_}.json") == {"writer": winners[0]}


def test_a_commit_whose_response_was_lost_is_recognised_on_retry(
    s3_root: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    s = Storage(s3_root)
    real = s.fs.pipe_file
    calls = []

    def lands_then_connection_drops(path: str, data: bytes, **kw: Any) -> None:
        calls.append(kw.get("mode"))
        real(path, data, **kw)
        if len(calls) == 1:
            raise ConnectionResetError("connection reset before the response arrived")

    monkeypatch.setattr(s.fs, "pipe_file", lands_then_connection_drops)
    assert s.create_json_exclusive("registry/x/versions/1.json", {"v": 1}) is True
    assert calls == ["create", "create"]  # the retry hit the condition, found its own bytes
    assert s.read_json("registry/x/versions/1.json") == {"v": 1}


def test_wrong_credentials_name_endpoint_and_bucket_not_the_secret(
    s3_root: str, s3_env: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    wrong = "CANARY-wrong-" + s3_env.secret[:6]
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", wrong)
    credentials.clear_cache()
    s = Storage(s3_root)
    for op in (lambda: s.write_bytes("x", b"1"), lambda: s.read_bytes("x"), lambda: s.list("a")):
        with pytest.raises(StorageError) as err:
            op()
        msg = str(err.value)
        assert "access denied" in msg and s3_env.endpoint in msg and repr(s3_env.bucket) in msg
        assert wrong not in msg and s3_env.secret not in msg


def test_reads_and_commits_ride_out_a_short_outage(s3_root: str, s3_env: Any) -> None:
    s = Storage(s3_root)
    s.write_bytes("before", b"1")
    s3_env.stop()
    threading.Timer(3.0, s3_env.start).start()
    start = time.monotonic()
    assert s.create_exclusive("during", b"2") is True
    assert time.monotonic() - start >= 2.5
    assert s.read_bytes("before") == b"1" and s.read_bytes("during") == b"2"


def test_small_objects_are_read_with_one_get(
    s3_root: str, s3_env: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Markers and registry entries are read often (every shard on every re-run): one GET each,
    not s3fs's HEAD-then-GET that splits big objects into ranged reads."""
    layout = RunLayout("ab" * 32)
    s = Storage(s3_root)
    data = parquet_bytes(pa.table({"row_id": ["r0", "r1"]}))
    marker = commit_shard(s, layout, ShardFiles("s1", data, None, 2, 0, "0" * 64))
    with FaultProxy(s3_env.port) as proxy:
        monkeypatch.setenv("AUGFLOW_S3_ENDPOINT_URL", proxy.endpoint)
        credentials.clear_cache()
        through_proxy = Storage(s3_root)
        seen = proxy.add(Rule("pass")).seen
        key = layout.commit_marker("s1")
        assert through_proxy.read_json(key)["data_file"] == marker.data_file
        assert [r.split(" ")[0] for r in seen] == ["GET"], seen
        seen.clear()
        # A data file is read the general way: its size first (big ones go in ranged parts).
        assert through_proxy.read_bytes(marker.data_file) == data
        assert [r.split(" ")[0] for r in seen] == ["HEAD", "GET"], seen


def _uploads(s: Storage) -> list[dict]:
    bucket = s.root.removeprefix("s3://").split("/", 1)[0]
    return s.fs.call_s3("list_multipart_uploads", Bucket=bucket).get("Uploads") or []


def test_big_objects_go_up_in_parts_with_the_etag_a_marker_records(
    s3_root: str, s3_env: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AUGFLOW_S3_PART_SIZE_MB", "5")
    credentials.clear_cache()  # settings are read once per process
    s = Storage(s3_root)
    data = os.urandom(11 * 2**20 + 123)  # three parts: 5 + 5 + 1 MiB
    s.write_bytes("t/big.bin", data)
    assert s.read_bytes("t/big.bin") == data
    info = s.info("t/big.bin")
    assert info.size == len(data)
    assert info.etag == content_etag(data) and info.etag.endswith("-3")  # as computed locally
    small = b"x" * 1000
    s.write_bytes("t/dir/small.bin", small)
    tree = s.info_tree("t")
    assert sorted(tree) == ["t/big.bin", "t/dir/small.bin"]
    assert tree["t/dir/small.bin"].etag == hashlib.md5(small).hexdigest()
    assert tree["t/big.bin"] == info
    assert s.sha256("t/big.bin") == hashlib.sha256(data).hexdigest()
    assert not [u for u in _uploads(s) if u["Key"].startswith(s3_root.split("/", 3)[3])]


def test_committed_files_are_checked_from_listings_without_reading_them(
    s3_root: str, s3_env: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    s = Storage(s3_root)
    layout = RunLayout("cd" * 32)
    data = parquet_bytes(pa.table({"row_id": [f"r{i}" for i in range(50)]}))
    marker = commit_shard(s, layout, ShardFiles("s1", data, None, 50, 0, "0" * 64))
    assert marker.data_etag == hashlib.md5(data).hexdigest()
    reads: list[str] = []
    real_sha = Storage.sha256

    def counting_sha256(self: Storage, key: str) -> str:
        reads.append(key)
        return real_sha(self, key)

    monkeypatch.setattr(Storage, "sha256", counting_sha256)
    assert list(committed_results(s, layout, ["s1"])) == ["s1"]
    assert reads == []  # size and ETag from one listing decided it
    # Same size, other bytes (an overwrite): the ETag differs, the object is read, and rejected.
    other = bytearray(data)
    other[len(other) // 2] ^= 0xFF
    s.write_bytes(marker.data_file, bytes(other))
    assert committed_results(s, layout, ["s1"]) == {}
    assert reads == [marker.data_file]
    # The same bytes uploaded with another part size (an ETag that is not their MD5): read and
    # accepted, not recomputed.
    monkeypatch.setenv("AUGFLOW_S3_PART_SIZE_MB", "5")
    credentials.clear_cache()
    s.write_bytes(marker.data_file, data + b"")
    assert list(committed_results(s, layout, ["s1"])) == ["s1"]


def test_sweeping_litter_aborts_stale_uploads_only_under_the_root(
    s3_root: str, s3_env: Any
) -> None:
    s = Storage(s3_root)
    bucket, prefix = s3_root.removeprefix("s3://").split("/", 1)
    mine = s.fs.call_s3("create_multipart_upload", Bucket=bucket, Key=f"{prefix}/runs/r/x.parquet")
    other = s.fs.call_s3("create_multipart_upload", Bucket=bucket, Key="elsewhere/y.parquet")
    try:
        assert s.sweep_litter("runs", older_than_s=3600) == 0  # too young: maybe a live writer
        assert s.sweep_litter("runs", older_than_s=0) == 1
        ids = {u["UploadId"] for u in _uploads(s)}
        assert mine["UploadId"] not in ids and other["UploadId"] in ids
    finally:
        s.fs.call_s3(
            "abort_multipart_upload",
            Bucket=bucket,
            Key="elsewhere/y.parquet",
            UploadId=other["UploadId"],
        )
