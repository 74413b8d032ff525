"""One fsspec storage wrapper rooted at the output URI.

Call sites name objects by keys relative to the root (``runs/<hash>/shards/x.parquet``); they never
build URIs by string concatenation nor see boto3. Commits use exclusive creates: on S3 a conditional
``If-None-Match: *`` PUT, locally a hard link of a finished temp file, which is atomic and fails
when the key exists.

Remote calls are retried with exponential backoff while the error is transient (connection
refused/reset, timeouts, 5xx, SlowDown) for at most ``AUGFLOW_S3_RETRY_SECONDS`` (default 60) in
total; anything else, or a store that stays down, raises :class:`StorageError` naming the endpoint
and bucket and saying what to check. Error text is scrubbed of the secret key. Refusals that
cannot succeed on retry (access denied, no such bucket, a read-only filesystem) raise
:class:`StoragePermissionError`, so callers stop instead of retrying.

No litter: a local write goes to ``<key>.tmp-<uuid>`` and is renamed into place; the temp file is
removed on every failure (ENOSPC included). Objects of two parts or more go up as a multipart
upload driven here, part by part with retries, and aborted on any failure. What a killed process
leaves behind (temp files, in-flight uploads) is swept by :meth:`Storage.sweep_litter` once it is
older than any live write could be.
"""

from __future__ import annotations

import builtins
import contextlib
import errno
import hashlib
import io
import json
import logging
import os
import posixpath
import random
import re
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq
from fsspec.implementations.local import LocalFileSystem

from augflow.schemas.errors import CommitConflictError, StorageError, StoragePermissionError
from augflow.schemas.settings import settings
from augflow.tasks.credentials import CHECK_HINT, S3Settings, s3_settings

log = logging.getLogger(__name__)
T = TypeVar("T")

# Reads move 16 MiB per request: few round trips for shard-sized files, and bounded memory per
# open file. Files under 2 parts (AUGFLOW_S3_PART_SIZE_MB, 64 MiB by default) go up in one PUT.
BLOCK_SIZE = 16 * 2**20
PUT_CHUNK = 64 * 2**20  # the default part size (AUGFLOW_S3_PART_SIZE_MB)

#: what a local temp file's name ends with: ``<key>.tmp-<32 hex>``
TMP_MARK = ".tmp-"
_TMP_NAME = re.compile(r"\.tmp-[0-9a-f]{32}$")

_TRANSIENT_CODES = {
    "SlowDown",
    "Throttling",
    "ThrottlingException",
    "RequestTimeout",
    "RequestTimeTooSkewed",
    "InternalError",
    "ServiceUnavailable",
    "ConditionalRequestConflict",  # AWS: another conditional write to the key is in flight
    "500",
    "502",
    "503",
    "504",
    "429",
}
_AUTH_CODES = {
    "AccessDenied",
    "AllAccessDisabled",
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "InvalidToken",
    "ExpiredToken",
    "403",
    "401",
}


def normalize_uri(uri: str) -> str:
    """Absolute ``file://`` URI for local paths; other URIs unchanged (minus a trailing slash)."""
    if "://" not in uri or uri.startswith("file://"):
        path = uri.removeprefix("file://")
        return "file://" + str(Path(path).expanduser().resolve())
    return uri.rstrip("/")


def _clean_key(key: str) -> str:
    norm = posixpath.normpath(key.strip("/"))
    if norm.startswith("..") or norm in ("", "."):
        raise StorageError(f"storage key {key!r} must be a path below the output root")
    return norm


def filesystem_for(uri: str) -> tuple[fsspec.AbstractFileSystem, str]:
    """The filesystem and protocol-free path of any URI (inputs live outside the output root)."""
    fs, path = fsspec.core.url_to_fs(normalize_uri(uri), **storage_options_for(uri))
    return fs, path


def storage_options_for(uri: str) -> dict[str, Any]:
    """fsspec options for ``uri`` from the environment or a Prefect block (never from a request).

    This is also what a downstream reader passes on, e.g.
    ``load_dataset("parquet", data_files=uris, storage_options=storage_options_for(uri))``.
    """
    if not uri.startswith(("s3://", "s3a://")):
        return {}
    return _s3fs_options(s3_settings())


def _s3fs_options(s: S3Settings) -> dict[str, Any]:
    opts: dict[str, Any] = {
        # botocore retries quickly a couple of times; the wrapper's own backoff covers outages.
        "config_kwargs": {
            "retries": {"max_attempts": 3, "mode": "standard"},
            "connect_timeout": 5,
            "read_timeout": 60,
        },
        "default_block_size": BLOCK_SIZE,
        # Markers are written by other processes; a cached listing must not hide them.
        "use_listings_cache": False,
    }
    if s.endpoint_url:
        opts["endpoint_url"] = s.endpoint_url
    if s.region:
        opts["client_kwargs"] = {"region_name": s.region}
    if s.key:
        opts["key"] = s.key
    if s.secret is not None:
        opts["secret"] = s.secret.get_secret_value()
    if s.token is not None:
        opts["token"] = s.token.get_secret_value()
    return opts


def arrow_filesystem(uri: str) -> Any:
    """A ``pyarrow.fs`` filesystem with the same settings, for pyarrow datasets and Ray Data."""
    from pyarrow.fs import FSSpecHandler, PyFileSystem

    fs, _ = filesystem_for(uri)
    return PyFileSystem(FSSpecHandler(fs))


# --- errors and retries ----------------------------------------------------------------------


def _chain(exc: BaseException) -> list[BaseException]:
    out: list[BaseException] = []
    cur: BaseException | None = exc
    while cur is not None and cur not in out and len(out) < 10:
        out.append(cur)
        cur = cur.__cause__ or cur.__context__
    return out


def _code(exc: BaseException) -> str | None:
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        err = response.get("Error") or {}
        code = err.get("Code")
        status = (response.get("ResponseMetadata") or {}).get("HTTPStatusCode")
        return str(code or status) if (code or status) else None
    return None


def classify(exc: BaseException) -> str:
    """``exists`` | ``missing`` | ``auth`` | ``transient`` | ``other`` for a storage exception."""
    import aiohttp
    import botocore.exceptions as bx

    transient_cls: tuple[type[BaseException], ...] = (
        ConnectionError,  # refused / reset / aborted
        TimeoutError,
        bx.ConnectionError,  # EndpointConnectionError, ConnectTimeout, ...
        bx.HTTPClientError,
        bx.ReadTimeoutError,
        aiohttp.ClientConnectionError,
        aiohttp.ClientPayloadError,
        fsspec.exceptions.FSTimeoutError,
    )
    for e in _chain(exc):
        code = _code(e)
        if code in ("PreconditionFailed", "412"):
            return "exists"
        if code in _TRANSIENT_CODES:
            return "transient"
        if code in _AUTH_CODES:
            return "auth"
        if code in ("NoSuchBucket",):
            return "no_bucket"
        if isinstance(e, FileExistsError):
            return "exists"
        if isinstance(e, FileNotFoundError):
            return "missing"
        if isinstance(e, transient_cls):
            return "transient"
        if isinstance(e, PermissionError):
            return "auth"
        if isinstance(e, OSError) and e.errno in (errno.ECONNREFUSED, errno.ECONNRESET):
            return "transient"
    return "other"


def _scrub(text: str, settings: S3Settings | None) -> str:
    for secret in settings.secrets() if settings else []:
        if secret:
            text = text.replace(secret, "***")
    return text


def _short(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}".splitlines()[0][:300]


def storage_error(what: str, uri: str, exc: BaseException, kind: str | None = None) -> StorageError:
    """A :class:`StorageError` for ``exc`` that says what to fix, without the secret."""
    kind = kind or classify(exc)
    if not uri.startswith(("s3://", "s3a://")):
        return _local_error(what, uri, exc)
    settings = s3_settings()
    endpoint = settings.endpoint_url or "AWS S3 (no endpoint URL set)"
    bucket = uri.split("://", 1)[1].split("/", 1)[0]
    where = f"S3 endpoint {endpoint}, bucket {bucket!r}"
    if kind == "auth":
        msg = (
            f"cannot {what} {uri}: access denied by {where} ({_short(exc)}); the credentials "
            f"came from {settings.source}: {CHECK_HINT}, and that the key may use this bucket"
        )
    elif kind == "no_bucket":
        msg = f"cannot {what} {uri}: {where} does not exist; create the bucket first"
    elif kind == "transient":
        msg = (
            f"cannot {what} {uri}: {where} did not answer after retrying for "
            f"{retry_seconds():.0f}s ({_short(exc)}); check that the store is up and that "
            "AUGFLOW_S3_ENDPOINT_URL / AWS_ENDPOINT_URL points at it. Committed shards are kept; "
            "a re-run resumes from them"
        )
    else:
        msg = f"cannot {what} {uri} ({where}): {_short(exc)}"
    cls = StoragePermissionError if kind in ("auth", "no_bucket") else StorageError
    return cls(_scrub(msg, settings))


def _local_error(what: str, uri: str, exc: BaseException) -> StorageError:
    """A local filesystem failure, said plainly; refusals become StoragePermissionError."""
    err = exc.errno if isinstance(exc, OSError) else None
    if err in (errno.ENOSPC, errno.EDQUOT):
        return StorageError(
            f"cannot {what} {uri}: no space left on the device holding it ({_short(exc)}); free "
            "space or move the output root. Nothing partial was left behind; committed shards are "
            "kept and a re-run resumes from them"
        )
    if isinstance(exc, PermissionError) or err in (errno.EACCES, errno.EPERM, errno.EROFS):
        return StoragePermissionError(
            f"cannot {what} {uri}: permission denied ({_short(exc)}); make the output root "
            "writable by this user or choose another one"
        )
    return StorageError(f"cannot {what} {uri}: {_short(exc)}")


def retry_seconds() -> float:
    return settings().s3_retry_seconds


def part_size() -> int:
    """Bytes per part of a multipart upload (``AUGFLOW_S3_PART_SIZE_MB``)."""
    return settings().s3_part_size_mb * 2**20


@dataclass(frozen=True)
class ObjectInfo:
    """What a listing says about one object: its size and, on S3, its ETag (unquoted)."""

    key: str
    size: int
    etag: str | None = None


def content_etag(data: bytes, part: int | None = None) -> str:
    """The ETag an MD5-ETag store (S3 without SSE-KMS, SeaweedFS, MinIO) reports for ``data`` as
    :meth:`Storage.write_bytes` uploads it: the MD5 of a single PUT, or for a multipart upload
    the MD5 of the parts' MD5s and ``-<parts>``. Deterministic, so it can live in a commit marker
    and be checked against a listing without reading the object."""
    part = part or part_size()
    if len(data) < 2 * part:
        return hashlib.md5(data, usedforsecurity=False).hexdigest()
    digests = b"".join(
        hashlib.md5(data[off : off + part], usedforsecurity=False).digest()
        for off in range(0, len(data), part)
    )
    count = -(-len(data) // part)
    return f"{hashlib.md5(digests, usedforsecurity=False).hexdigest()}-{count}"


def with_retries(what: str, uri: str, fn: Callable[[], T], passthrough: tuple[str, ...] = ()) -> T:
    """Run ``fn``, retrying transient failures with capped exponential backoff and jitter.

    Exceptions whose :func:`classify` kind is in ``passthrough`` are re-raised unchanged (the
    caller handles them); FileNotFoundError always is. ``fn`` must be safe to repeat.
    """
    deadline = time.monotonic() + retry_seconds()
    delay = 0.25
    attempt = 0
    while True:
        attempt += 1
        try:
            return fn()
        except Exception as exc:
            kind = classify(exc)
            if kind in passthrough or kind == "missing":
                raise
            left = deadline - time.monotonic()
            if kind != "transient" or left <= 0:
                raise storage_error(what, uri, exc, kind) from None
            pause = min(delay * (1 + random.random() / 2), left, 8.0)
            log.warning(
                "storage: %s %s failed (attempt %d, %s); retrying in %.1fs",
                what,
                uri,
                attempt,
                _scrub(_short(exc), s3_settings() if uri.startswith("s3") else None),
                pause,
            )
            time.sleep(pause)
            delay = min(delay * 2, 8.0)


# --- the wrapper ------------------------------------------------------------------------------


class Storage:
    """Objects under one root URI (``file:///data/aug``, ``s3://bucket/aug``)."""

    def __init__(self, root_uri: str) -> None:
        self.root = normalize_uri(root_uri)
        self.fs, self._root_path = filesystem_for(self.root)
        self.is_local = isinstance(self.fs, LocalFileSystem)

    def __repr__(self) -> str:
        return f"Storage({self.root!r})"

    # --- naming -------------------------------------------------------------------------
    def path(self, key: str) -> str:
        return posixpath.join(self._root_path, _clean_key(key))

    def uri(self, key: str) -> str:
        return self.root + "/" + _clean_key(key)

    # --- reads --------------------------------------------------------------------------
    def exists(self, key: str) -> bool:
        path = self.path(key)

        def check() -> bool:
            try:
                self.fs.info(path)
                return True
            except FileNotFoundError:
                return False

        return self._call("check", key, check)

    def read_bytes(self, key: str, small: bool = False) -> bytes:
        """An object's bytes. ``small`` (markers, registry entries): one GET. Otherwise s3fs
        first HEADs the object to split a big one into concurrent ranged GETs."""
        path = self.path(key)
        if small and not self.is_local:
            return self._call("read", key, lambda: self.fs.cat_file(path, max_concurrency=1))
        return self._call("read", key, lambda: self.fs.cat_file(path))

    def read_json(self, key: str) -> Any:
        return json.loads(self.read_bytes(key, small=True))

    def list(self, prefix: str) -> list[str]:
        """Keys directly below ``prefix`` (empty when it does not exist)."""
        base = self.path(prefix)
        try:
            entries = self._call("list", prefix, lambda: self.fs.ls(base, detail=False))
        except FileNotFoundError:
            return []
        root = self._root_path.rstrip("/") + "/"
        return sorted(e.removeprefix(root) for e in entries if e.rstrip("/") != base.rstrip("/"))

    def size(self, key: str) -> int:
        return int(self._call("stat", key, lambda: self.fs.size(self.path(key))))

    def info_tree(self, prefix: str) -> dict[str, ObjectInfo]:
        """Every object below ``prefix`` (recursively) by key, with size and ETag, from listings
        only: one LIST request per 1000 objects on S3, never a read. Local temp files are left out.
        """
        base = self.path(prefix)
        root = self._root_path.rstrip("/") + "/"
        out: dict[str, ObjectInfo] = {}
        if self.is_local:
            for dirpath, _dirs, files in os.walk(base):
                for name in files:
                    if _TMP_NAME.search(name):
                        continue
                    full = os.path.join(dirpath, name)
                    with contextlib.suppress(FileNotFoundError):
                        key = full.removeprefix(root)
                        out[key] = ObjectInfo(key, os.stat(full).st_size)
            return out
        try:
            found = self._call(
                "list", prefix, lambda: self.fs.find(base, detail=True, withdirs=False)
            )
        except FileNotFoundError:
            return {}
        for path, entry in found.items():
            key = path.removeprefix(root)
            etag = entry.get("ETag") or entry.get("etag")
            out[key] = ObjectInfo(key, int(entry.get("size") or 0), _unquote(etag))
        return out

    def info(self, key: str) -> ObjectInfo:
        """Size (and ETag on S3) of one object; FileNotFoundError when there is none."""
        entry = self._call("stat", key, lambda: self.fs.info(self.path(key)))
        return ObjectInfo(key, int(entry.get("size") or 0), _unquote(entry.get("ETag")))

    def sha256(self, key: str) -> str:
        """The sha256 of an object's bytes, read in blocks (bounded memory for any size)."""

        def digest() -> str:
            h = hashlib.sha256()
            with self.fs.open(self.path(key), "rb", block_size=BLOCK_SIZE) as f:
                while chunk := f.read(BLOCK_SIZE):
                    h.update(chunk)
            return h.hexdigest()

        return self._call("read", key, digest)

    # `builtins.list`: in this class's annotations `list` names the method above.
    def read_parquet(
        self, keys: Iterable[str], columns: builtins.list[str] | None = None
    ) -> pa.Table:
        """The rows of several Parquet files, concatenated.

        A file that is missing or does not parse raises :class:`StorageError` naming it (never a
        raw pyarrow error): a damaged shard is a storage problem, not a quality failure.
        """
        tables = []
        for key in keys:
            try:
                if self.is_local:
                    with self.fs.open(self.path(key), "rb") as f:
                        tables.append(pq.read_table(f, columns=columns))
                else:
                    # The whole file, retried as a whole: a half-read file is never used.
                    data = self.read_bytes(key)
                    tables.append(pq.read_table(io.BytesIO(data), columns=columns))
            except StorageError:
                raise
            except FileNotFoundError:
                raise StorageError(
                    f"{self.uri(key)} is missing; it was deleted after its shard was committed. "
                    "Re-run the request: committed files are checked against their commit "
                    "markers and missing or damaged shards are recomputed"
                ) from None
            except Exception as exc:
                raise StorageError(
                    f"{self.uri(key)} cannot be read as Parquet ({_short(exc)}); the file is "
                    "damaged. Re-run the request: committed files are checked against their "
                    "commit markers and damaged shards are recomputed"
                ) from exc
        if not tables:
            raise StorageError("read_parquet was given no files")
        return pa.concat_tables(tables)

    # --- writes -------------------------------------------------------------------------
    def write_bytes(self, key: str, data: bytes) -> None:
        """Write (or replace) an object; it appears whole or not at all, and a failed write
        leaves nothing behind (no temp file, no in-flight upload)."""
        path = self.path(key)
        if self.is_local:
            self._write_local(key, data, lambda tmp: os.replace(tmp, path))
            return
        part = part_size()
        if len(data) >= 2 * part:
            self._multipart_put(key, data, part)
            return
        # A PUT is atomic on S3, so a retry is safe.
        self._call("write", key, lambda: self.fs.pipe_file(path, data, chunksize=part))

    def _write_local(self, key: str, data: bytes, publish: Callable[[str], None]) -> None:
        """Write ``data`` to a temp file beside ``key`` and ``publish`` it (rename or link).

        The temp file is removed whatever happens (a full disk, a refused rename, an interrupt).
        """
        path = self.path(key)
        tmp = f"{path}{TMP_MARK}{uuid.uuid4().hex}"
        try:
            os.makedirs(posixpath.dirname(path), exist_ok=True)
            with open(tmp, "wb") as f:
                f.write(data)
            publish(tmp)
        except OSError as exc:
            if isinstance(exc, FileExistsError):
                raise
            raise _local_error("write", self.uri(key), exc) from exc
        finally:
            with contextlib.suppress(OSError):  # gone, or never created (read-only, no dir)
                os.unlink(tmp)

    def _multipart_put(self, key: str, data: bytes, part: int) -> None:
        """Upload ``data`` in parts of ``part`` bytes; abort the upload on any failure.

        Each part is retried on its own (a part is idempotent: uploading it again replaces it),
        so one failed part costs one part, not the whole upload.
        """
        path = self.path(key)
        bucket, obj, _ = self.fs.split_path(path)
        started = self._call(
            "start an upload of",
            key,
            lambda: self.fs.call_s3("create_multipart_upload", Bucket=bucket, Key=obj),
        )
        upload_id = started["UploadId"]
        completes = 0
        try:
            parts = []
            for number, offset in enumerate(range(0, len(data), part), start=1):
                body = data[offset : offset + part]

                def put(body: bytes = body, number: int = number) -> Any:
                    return self.fs.call_s3(
                        "upload_part",
                        Bucket=bucket,
                        Key=obj,
                        UploadId=upload_id,
                        PartNumber=number,
                        Body=body,
                    )

                out = self._call(f"upload part {number} of", key, put)
                parts.append({"PartNumber": number, "ETag": out["ETag"]})

            def complete() -> None:
                nonlocal completes
                completes += 1
                self.fs.call_s3(
                    "complete_multipart_upload",
                    Bucket=bucket,
                    Key=obj,
                    UploadId=upload_id,
                    MultipartUpload={"Parts": parts},
                )

            try:
                self._call("complete the upload of", key, complete)
            except Exception:
                # A completion whose response was lost and that was retried finds the upload
                # gone (NoSuchUpload): the object being there, whole, is the proof it completed.
                if completes < 2 or not self._holds(key, data, part):
                    raise
        except BaseException:
            self._abort_upload(key, bucket, obj, upload_id)
            raise
        finally:
            self.fs.invalidate_cache(path)

    def _holds(self, key: str, data: bytes, part: int) -> bool:
        try:
            info = self.info(key)
        except Exception:
            return False
        return info.size == len(data) and info.etag == content_etag(data, part)

    def _abort_upload(self, key: str, bucket: str, obj: str, upload_id: str) -> None:
        try:
            with_retries(
                "abort the upload of",
                self.uri(key),
                lambda: self.fs.call_s3(
                    "abort_multipart_upload", Bucket=bucket, Key=obj, UploadId=upload_id
                ),
                passthrough=("missing",),
            )
        except FileNotFoundError:
            pass  # already gone (completed or aborted)
        except Exception as exc:
            log.warning(
                "storage: could not abort the failed upload %s of %s (%s); the next run's "
                "preflight sweeps it (or set an AbortIncompleteMultipartUpload lifecycle rule)",
                upload_id,
                self.uri(key),
                _scrub(_short(exc), s3_settings()),
            )

    def write_json(self, key: str, obj: Any) -> None:
        self.write_bytes(key, _json_bytes(obj))

    def write_parquet(self, key: str, table: pa.Table, **kwargs: Any) -> int:
        """Write one Parquet file; returns its size in bytes.

        Encoded in memory and uploaded in one request: shard files are bounded by the shard size,
        and a single PUT is both atomic and cheaper than a streamed multipart upload.
        """
        data = parquet_bytes(table, **kwargs)
        self.write_bytes(key, data)
        return len(data)

    def create_exclusive(self, key: str, data: bytes) -> bool:
        """Create ``key`` only if it does not exist.

        Returns True when this call created it, False when the same bytes were already there
        (another run committed the same thing). Different bytes there raise
        :class:`CommitConflictError`. A create whose response was lost and which is retried finds
        its own bytes and returns True.
        """
        path = self.path(key)
        if self.is_local:
            try:
                self._write_local(key, data, lambda tmp: os.link(tmp, path))
                return True
            except FileExistsError:
                return self._same_or_conflict(key, data, retried=False)
        attempts = 0

        def put() -> None:
            nonlocal attempts
            attempts += 1
            self.fs.pipe_file(path, data, mode="create")

        try:
            self._call("create", key, put, passthrough=("exists",))
            return True
        except Exception as exc:
            if classify(exc) != "exists":
                raise
            return self._same_or_conflict(key, data, retried=attempts > 1)

    def _same_or_conflict(self, key: str, data: bytes, retried: bool) -> bool:
        existing = self.read_bytes(key, small=True)
        if existing == data:
            return retried
        raise CommitConflictError(
            f"{self.uri(key)} already exists with different content; it was created by "
            "another run and is never overwritten"
        ) from None

    def create_json_exclusive(self, key: str, obj: Any) -> bool:
        return self.create_exclusive(key, _json_bytes(obj))

    def delete(self, key: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self._call("delete", key, lambda: self.fs.rm_file(self.path(key)))

    # --- litter -------------------------------------------------------------------------
    def sweep_litter(self, prefix: str, older_than_s: float) -> int:
        """Remove what killed writers left below ``prefix``: local temp files, or on S3 the
        in-flight multipart uploads, started more than ``older_than_s`` ago (younger ones may
        belong to a live writer). Returns how many were removed; never raises."""
        cutoff = time.time() - older_than_s
        removed = 0
        try:
            if self.is_local:
                for dirpath, _dirs, files in os.walk(self.path(prefix)):
                    for name in files:
                        full = os.path.join(dirpath, name)
                        with contextlib.suppress(FileNotFoundError):
                            if _TMP_NAME.search(name) and os.stat(full).st_mtime < cutoff:
                                os.unlink(full)
                                removed += 1
                return removed
            bucket, obj, _ = self.fs.split_path(self.path(prefix))
            listing = with_retries(
                "list the uploads in",
                self.uri(prefix),
                lambda: self.fs.call_s3(
                    "list_multipart_uploads", Bucket=bucket, Prefix=obj.rstrip("/") + "/"
                ),
            )
            for upload in listing.get("Uploads") or []:
                started = upload.get("Initiated")
                if isinstance(started, datetime) and started.astimezone(UTC).timestamp() < cutoff:
                    key = f"{bucket}/{upload['Key']}".removeprefix(
                        self._root_path.rstrip("/") + "/"
                    )
                    self._abort_upload(key, bucket, upload["Key"], upload["UploadId"])
                    removed += 1
        except Exception as exc:  # a sweep is housekeeping: it must never fail a run
            log.info("storage: litter sweep of %s skipped (%s)", self.uri(prefix), _short(exc))
        if removed:
            log.warning("storage: removed %d leftovers of killed writes under %s", removed, prefix)
        return removed

    # --- helpers ------------------------------------------------------------------------
    def _call(
        self, what: str, key: str, fn: Callable[[], T], passthrough: tuple[str, ...] = ()
    ) -> T:
        if self.is_local:
            try:
                return fn()
            except (FileNotFoundError, StorageError):
                raise
            except Exception as exc:
                raise _local_error(what, self.uri(key), exc) from exc
        return with_retries(what, self.uri(key), fn, passthrough)


def _unquote(etag: Any) -> str | None:
    return str(etag).strip('"') if etag else None


def parquet_bytes(table: pa.Table, **kwargs: Any) -> bytes:
    """``table`` encoded as one Parquet file, with augflow's codec defaults."""
    # an Arrow buffer, not io.BytesIO: every page written to a Python file object takes the GIL
    # (2x slower, and it stalls the threads that feed the device)
    buf = pa.BufferOutputStream()
    for name, value in _codec_defaults(table.schema).items():
        kwargs.setdefault(name, value)
    pq.write_table(table, buf, **kwargs)
    return buf.getvalue().to_pybytes()


def _codec_defaults(schema: pa.Schema) -> dict[str, Any]:
    """zstd everywhere except binary cells (PNG/JPEG bytes): those are already compressed, and
    zstd plus a dictionary attempt on them cost ~10x the encode time for no size gain."""
    codecs: dict[str, str] = {}
    dictionary: list[str] = []

    def walk(field: pa.Field, prefix: str) -> bool:
        path = prefix + field.name
        if pa.types.is_struct(field.type):
            return all(walk(field.type.field(i), path + ".") for i in range(field.type.num_fields))
        if pa.types.is_nested(field.type):
            return False  # list/map leaf paths are writer-specific; keep the simple default
        binary = pa.types.is_binary(field.type) or pa.types.is_large_binary(field.type)
        codecs[path] = "none" if binary else "zstd"
        if not binary:
            dictionary.append(path)
        return True

    if not all(walk(f, "") for f in schema):
        return {"compression": "zstd"}
    return {"compression": codecs, "use_dictionary": dictionary}


def _json_bytes(obj: Any) -> bytes:
    return (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode()


def open_uri(uri: str, mode: str = "rb") -> Any:
    """Open any input URI (a source image or Parquet file outside the output root).

    Remote reads fetch the whole object with retries and hand back an in-memory file: inputs are
    single images or Parquet files read whole anyway, and a retried whole GET never mixes bytes of
    two attempts.
    """
    fs, path = filesystem_for(uri)
    if mode != "rb" or isinstance(fs, LocalFileSystem):
        return fs.open(path, mode)
    return io.BytesIO(with_retries("read", normalize_uri(uri), lambda: fs.cat_file(path)))
