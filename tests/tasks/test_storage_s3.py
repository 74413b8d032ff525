"""The storage wrapper against a real SeaweedFS (auth on): conditional creates, lost responses,
wrong credentials, and outages."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

from augflow.schemas.errors import CommitConflictError, StorageError
from augflow.tasks import credentials
from augflow.tasks.storage import Storage, open_uri

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
