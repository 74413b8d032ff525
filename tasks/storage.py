"""One fsspec storage wrapper rooted at the output URI.

Call sites name objects by keys relative to the root (``runs/<hash>/shards/x.parquet``); they never
build URIs by string concatenation nor see boto3. Commits use exclusive creates: on S3 a conditional
``If-None-Match`` write (``mode="xb"``), locally a hard link of a finished temp file, which is atomic
and fails when the key exists.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import posixpath
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq
from fsspec.implementations.local import LocalFileSystem

from augflow.schemas.errors import CommitConflictError, StorageError


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
    """Connection settings from the environment only (never from a request)."""
    if uri.startswith("s3://"):
        opts: dict[str, Any] = {}
        endpoint = os.environ.get("AUGFLOW_S3_ENDPOINT_URL") or os.environ.get("AWS_ENDPOINT_URL")
        if endpoint:
            opts["endpoint_url"] = endpoint
        return opts
    return {}


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
        return self._call("check", key, self.fs.exists, self.path(key))

    def read_bytes(self, key: str) -> bytes:
        return self._call("read", key, self.fs.cat_file, self.path(key))

    def read_json(self, key: str) -> Any:
        return json.loads(self.read_bytes(key))

    def list(self, prefix: str) -> list[str]:
        """Keys directly below ``prefix`` (empty when it does not exist)."""
        base = self.path(prefix)
        try:
            entries = self.fs.ls(base, detail=False, refresh=True)
        except FileNotFoundError:
            return []
        except Exception as exc:
            raise StorageError(f"cannot list {self.uri(prefix)}: {exc}") from exc
        root = self._root_path.rstrip("/") + "/"
        return sorted(e.removeprefix(root) for e in entries if e.rstrip("/") != base.rstrip("/"))

    def size(self, key: str) -> int:
        return int(self._call("stat", key, self.fs.size, self.path(key)))

    def read_parquet(self, keys: Iterable[str], columns: list[str] | None = None) -> pa.Table:
        tables = []
        for key in keys:
            with self.fs.open(self.path(key), "rb") as f:
                tables.append(pq.read_table(f, columns=columns))
        if not tables:
            raise StorageError("read_parquet was given no files")
        return pa.concat_tables(tables)

    # --- writes -------------------------------------------------------------------------
    def write_bytes(self, key: str, data: bytes) -> None:
        """Write (or replace) an object. Locally the object appears whole or not at all."""
        path = self.path(key)
        if self.is_local:
            os.makedirs(posixpath.dirname(path), exist_ok=True)
            tmp = f"{path}.tmp-{uuid.uuid4().hex}"
            with open(tmp, "wb") as f:
                f.write(data)
            os.replace(tmp, path)
            return
        self._call("write", key, self.fs.pipe_file, path, data)

    def write_json(self, key: str, obj: Any) -> None:
        self.write_bytes(key, _json_bytes(obj))

    def write_parquet(self, key: str, table: pa.Table, **kwargs: Any) -> int:
        """Write one Parquet file; returns its size in bytes."""
        buf = io.BytesIO()
        pq.write_table(table, buf, compression="zstd", **kwargs)
        data = buf.getvalue()
        self.write_bytes(key, data)
        return len(data)

    def create_exclusive(self, key: str, data: bytes) -> bool:
        """Create ``key`` only if it does not exist.

        Returns True when this call created it, False when the same bytes were already there (a
        retried commit whose first response was lost). Different bytes there raise
        :class:`CommitConflictError`.
        """
        path = self.path(key)
        try:
            if self.is_local:
                os.makedirs(posixpath.dirname(path), exist_ok=True)
                tmp = f"{path}.tmp-{uuid.uuid4().hex}"
                with open(tmp, "wb") as f:
                    f.write(data)
                try:
                    os.link(tmp, path)
                finally:
                    os.unlink(tmp)
            else:
                with self.fs.open(path, "xb") as f:
                    f.write(data)
            return True
        except FileExistsError:
            existing = self.read_bytes(key)
            if existing == data:
                return False
            raise CommitConflictError(
                f"{self.uri(key)} already exists with different content; it was created by "
                "another run and is never overwritten"
            ) from None
        except OSError as exc:
            raise StorageError(f"cannot create {self.uri(key)}: {exc}") from exc

    def create_json_exclusive(self, key: str, obj: Any) -> bool:
        return self.create_exclusive(key, _json_bytes(obj))

    def delete(self, key: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.fs.rm_file(self.path(key))

    # --- helpers ------------------------------------------------------------------------
    def _call(self, what: str, key: str, fn: Any, *args: Any) -> Any:
        try:
            return fn(*args)
        except FileNotFoundError:
            raise
        except Exception as exc:
            raise StorageError(
                f"cannot {what} {self.uri(key)}: {type(exc).__name__}: {exc}"
            ) from exc


def _json_bytes(obj: Any) -> bytes:
    return (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode()


def open_uri(uri: str, mode: str = "rb") -> Any:
    """Open any input URI (a source image or Parquet file outside the output root)."""
    fs, path = filesystem_for(uri)
    return fs.open(path, mode)
