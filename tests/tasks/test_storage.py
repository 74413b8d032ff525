"""The storage wrapper without a server: keys, local exclusive creates, error classification,
retries with backoff, credential sources and secret scrubbing."""

from __future__ import annotations

import errno
import hashlib
import io
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from botocore.exceptions import ClientError, EndpointConnectionError

from augflow.schemas.errors import CommitConflictError, StorageError
from augflow.tasks import credentials
from augflow.tasks.storage import (
    Storage,
    classify,
    content_etag,
    normalize_uri,
    open_uri,
    storage_options_for,
    with_retries,
)


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in (
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_SESSION_TOKEN",
        "AWS_ENDPOINT_URL",
        "AWS_ENDPOINT_URL_S3",
        "AUGFLOW_S3_ENDPOINT_URL",
        credentials.BLOCK_ENV,
    ):
        monkeypatch.delenv(var, raising=False)
    credentials.clear_cache()


def _client_error(code: str, status: int) -> ClientError:
    return ClientError(
        {"Error": {"Code": code, "Message": code}, "ResponseMetadata": {"HTTPStatusCode": status}},
        "PutObject",
    )


def _wrapped(inner: BaseException) -> OSError:
    # s3fs translates a ClientError into an OSError whose cause is the original.
    outer = OSError(errno.EIO, str(inner))
    outer.__cause__ = inner
    return outer


def test_keys_stay_below_the_root(tmp_path: Path) -> None:
    s = Storage(str(tmp_path))
    assert s.root == normalize_uri(str(tmp_path)) and s.root.startswith("file://")
    assert s.uri("a//b/") == s.root + "/a/b"
    for bad in ("../x", "/", "a/../../x"):
        with pytest.raises(StorageError, match="below the output root"):
            s.path(bad)


def test_local_exclusive_create_is_idempotent_and_never_overwrites(tmp_path: Path) -> None:
    s = Storage(str(tmp_path))
    assert s.create_json_exclusive("m/1.json", {"a": 1}) is True
    assert s.create_json_exclusive("m/1.json", {"a": 1}) is False
    with pytest.raises(CommitConflictError, match="never overwritten"):
        s.create_json_exclusive("m/1.json", {"a": 2})
    assert s.read_json("m/1.json") == {"a": 1}
    assert s.list("m") == ["m/1.json"]  # no temp files left behind


def test_parquet_round_trip_keeps_image_bytes_uncompressed(tmp_path: Path) -> None:
    s = Storage(str(tmp_path))
    table = pa.table({"image": [{"bytes": b"\x89PNG" * 100, "path": "a.png"}], "row_id": ["r"]})
    size = s.write_parquet("x.parquet", table)
    assert size == s.size("x.parquet")
    assert s.read_parquet(["x.parquet"]).equals(table)
    meta = pq.read_metadata(io.BytesIO(s.read_bytes("x.parquet")))
    codecs = {
        meta.row_group(0).column(i).path_in_schema: meta.row_group(0).column(i).compression
        for i in range(meta.num_columns)
    }
    assert codecs == {"image.bytes": "UNCOMPRESSED", "image.path": "ZSTD", "row_id": "ZSTD"}
    with open_uri(s.uri("x.parquet")) as fh:
        assert pq.read_table(fh).num_rows == 1


@pytest.mark.parametrize(
    ("exc", "kind"),
    [
        (EndpointConnectionError(endpoint_url="http://127.0.0.1:1"), "transient"),
        (ConnectionRefusedError(errno.ECONNREFUSED, "refused"), "transient"),
        (TimeoutError("read timed out"), "transient"),
        (_wrapped(_client_error("SlowDown", 503)), "transient"),
        (_wrapped(_client_error("InternalError", 500)), "transient"),
        (_wrapped(_client_error("SignatureDoesNotMatch", 403)), "auth"),
        (PermissionError("Forbidden"), "auth"),
        (_wrapped(_client_error("PreconditionFailed", 412)), "exists"),
        (FileNotFoundError("nope"), "missing"),
        (_wrapped(_client_error("NoSuchBucket", 404)), "no_bucket"),
        (ValueError("bad"), "other"),
    ],
)
def test_classify(exc: BaseException, kind: str) -> None:
    assert classify(exc) == kind


def test_transient_errors_are_retried_with_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AUGFLOW_S3_RETRY_SECONDS", "10")
    credentials.clear_cache()  # settings are read once per process
    calls: list[float] = []

    def flaky() -> str:
        calls.append(time.monotonic())
        if len(calls) < 3:
            raise _wrapped(_client_error("SlowDown", 503))
        return "ok"

    assert with_retries("read", "s3://b/k", flaky) == "ok"
    assert len(calls) == 3 and calls[2] - calls[1] > calls[1] - calls[0]  # the pause grows


def test_a_store_that_stays_down_fails_clearly_within_the_budget(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("AUGFLOW_S3_RETRY_SECONDS", "1.5")
    monkeypatch.setenv("AUGFLOW_S3_ENDPOINT_URL", "http://127.0.0.1:9")
    credentials.clear_cache()  # settings are read once per process
    start = time.monotonic()

    def down() -> None:
        raise EndpointConnectionError(endpoint_url="http://127.0.0.1:9")

    with pytest.raises(StorageError) as err:
        with_retries("write", "s3://my-bucket/x", down)
    assert time.monotonic() - start < 5
    msg = str(err.value)
    assert "http://127.0.0.1:9" in msg and "'my-bucket'" in msg and "did not answer" in msg
    assert "re-run resumes" in msg


def test_auth_errors_are_not_retried_and_never_show_the_secret(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    secret = "CANARY-unit-secret"
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "k")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret)
    monkeypatch.setenv("AUGFLOW_S3_ENDPOINT_URL", "http://127.0.0.1:8333")
    credentials.clear_cache()  # settings are read once per process
    calls = []

    def denied() -> None:
        calls.append(1)
        # Even a server that echoed the secret back must not get it into our message.
        raise PermissionError(f"SignatureDoesNotMatch for secret {secret}")

    with pytest.raises(StorageError) as err:
        with_retries("list", "s3://data/x", denied)
    assert len(calls) == 1
    msg = str(err.value)
    assert secret not in msg and "***" in msg
    assert "access denied" in msg and "http://127.0.0.1:8333" in msg and "'data'" in msg
    assert "AWS_SECRET_ACCESS_KEY" in msg and credentials.BLOCK_ENV in msg


def test_settings_come_from_the_aws_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    assert storage_options_for("file:///x") == {}
    opts = storage_options_for("s3://b/x")
    assert "key" not in opts and "endpoint_url" not in opts  # botocore's default chain
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "id")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "CANARY-env")
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://generic:1")
    monkeypatch.setenv("AUGFLOW_S3_ENDPOINT_URL", "http://augflow:2")
    monkeypatch.setenv("AWS_REGION", "eu-west-1")
    credentials.clear_cache()  # settings are read once per process
    opts = storage_options_for("s3://b/x")
    assert opts["key"] == "id" and opts["secret"] == "CANARY-env"
    assert opts["endpoint_url"] == "http://augflow:2"
    assert opts["client_kwargs"] == {"region_name": "eu-west-1"}
    settings = credentials.s3_settings()
    assert "CANARY-env" not in repr(settings)  # masked in any repr or log line
    assert credentials.forwarded_settings() == settings
    monkeypatch.setenv(credentials.FORWARD_ENV, "false")
    credentials.clear_cache()  # settings are read once per process
    assert credentials.forwarded_settings() is None


def test_installed_settings_win(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "from-env")
    credentials.clear_cache()  # settings are read once per process
    installed = credentials.S3Settings(source="driver", endpoint_url="http://x:1", key="driver")
    credentials.install_s3_settings(installed)
    assert storage_options_for("s3://b")["key"] == "driver"


# --- no litter, clear errors on a real full or read-only filesystem -------------------------------

# Runs inside a private user+mount namespace (`unshare -Urm`) on a tmpfs of a few KiB mounted just
# for it: a real filesystem returning real ENOSPC / EROFS, gone when the process exits.
_FULL_DISK = """
import json, os, subprocess, sys
from pathlib import Path
import pyarrow as pa
from augflow.schemas.errors import StorageError, StoragePermissionError
from augflow.tasks.commits import ShardFiles, commit_shard, shard_state
from augflow.tasks.layout import RunLayout
from augflow.tasks.storage import Storage, parquet_bytes

full, ro = sys.argv[1], sys.argv[2]
subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", full], check=True)
subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=64k", "tmpfs", ro], check=True)
out = {}
s = Storage(full)
s.write_bytes("small.json", b"{}")  # fits
for name, op in {
    "write_bytes": lambda: s.write_bytes("big.bin", os.urandom(200_000)),
    "create_exclusive": lambda: s.create_exclusive("big.json", os.urandom(200_000)),
    "write_parquet": lambda: s.write_parquet(
        "big.parquet", pa.table({"x": [os.urandom(1000) for _ in range(200)]})
    ),
}.items():
    try:
        op()
        out[name] = "no error"
    except StorageError as exc:
        out[name] = str(exc)
layout = RunLayout("ab" * 32)
data = parquet_bytes(pa.table({"x": [os.urandom(1000) for _ in range(200)]}))
files = ShardFiles("s1", data, None, 200, 0, "0" * 64)
try:
    commit_shard(s, layout, files)
    out["commit"] = "no error"
except StorageError as exc:
    out["commit"] = str(exc)
out["committed_after"] = shard_state(s, layout, "s1").generation
out["left"] = sorted(str(p.relative_to(full)) for p in Path(full).rglob("*") if p.is_file())
try:
    Storage(ro).write_bytes("x", b"1")
    out["ro"] = "no error"
except StoragePermissionError as exc:
    out["ro"] = "StoragePermissionError: " + str(exc)
print(json.dumps(out))
"""


def _in_namespace(tmp_path: Path, script: str, *args: str) -> subprocess.CompletedProcess[str]:
    probe = subprocess.run(["unshare", "-Urm", "true"], capture_output=True)
    if probe.returncode != 0:
        pytest.skip(f"cannot create a user+mount namespace here: {probe.stderr!r}")
    path = tmp_path / "script.py"
    path.write_text(script)
    return subprocess.run(
        ["unshare", "-Urm", sys.executable, str(path), *args],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_a_full_disk_fails_clearly_and_leaves_no_temp_files(tmp_path: Path) -> None:
    full, ro = tmp_path / "full", tmp_path / "ro"
    full.mkdir()
    ro.mkdir()
    proc = _in_namespace(tmp_path, _FULL_DISK, str(full), str(ro))
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    for op in ("write_bytes", "create_exclusive", "write_parquet", "commit"):
        assert "no space left on the device" in out[op], (op, out[op])
        assert "Nothing partial was left behind" in out[op]
    assert out["committed_after"] == -1  # no marker for a shard whose files did not fit
    assert out["left"] == ["small.json"]  # no *.tmp-* file, no partial object
    assert out["ro"].startswith("StoragePermissionError") and "permission denied" in out["ro"]


def test_a_damaged_parquet_file_is_named_not_a_raw_pyarrow_error(tmp_path: Path) -> None:
    s = Storage(str(tmp_path))
    s.write_parquet("a.parquet", pa.table({"x": [1, 2, 3]}))
    s.write_parquet("b.parquet", pa.table({"x": [4]}))
    path = tmp_path / "b.parquet"
    path.write_bytes(path.read_bytes()[:-20])
    with pytest.raises(StorageError) as err:
        s.read_parquet(["a.parquet", "b.parquet"])
    assert s.uri("b.parquet") in str(err.value) and "damaged" in str(err.value)
    with pytest.raises(StorageError, match="is missing"):
        s.read_parquet(["a.parquet", "gone.parquet"])


def test_litter_of_killed_writes_is_swept_once_old(tmp_path: Path) -> None:
    s = Storage(str(tmp_path))
    s.write_bytes("runs/r/shards/a.parquet", b"keep")
    old = tmp_path / "runs/r/shards" / f"b.parquet.tmp-{'1' * 32}"
    young = tmp_path / "runs/r/shards" / f"c.parquet.tmp-{'2' * 32}"
    for p in (old, young):
        p.write_bytes(b"partial")
    os.utime(old, (time.time() - 7200, time.time() - 7200))
    assert "runs/r/shards/b.parquet.tmp-" + "1" * 32 not in s.info_tree("runs")  # never listed
    assert s.sweep_litter("runs/r", older_than_s=3600) == 1
    assert not old.exists() and young.exists()  # a live writer's temp file is left alone
    assert (tmp_path / "runs/r/shards/a.parquet").read_bytes() == b"keep"


def test_content_etag_matches_s3s_single_and_multipart_rule() -> None:
    data = bytes(range(256)) * 4096  # 1 MiB
    assert content_etag(data, part=2**20) == hashlib.md5(data).hexdigest()  # < 2 parts: one PUT
    part = 256 * 1024
    parts = [hashlib.md5(data[i : i + part]).digest() for i in range(0, len(data), part)]
    assert content_etag(data, part=part) == hashlib.md5(b"".join(parts)).hexdigest() + "-4"
