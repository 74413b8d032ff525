"""Export a registered version as WebDataset tars or as a Hugging Face image folder.

WebDataset (what img2dataset writes and NeMo Curator, ``webdataset`` and torchdata read): tar
shards ``<name>-<version>-000000.tar`` ..., one sample per row, keyed by its ``row_id``:

    <row_id>.png   the image bytes as stored (``.jpg`` / ``.webp`` when they are JPEG / WEBP)
    <row_id>.json  every other column of the row: its lineage and per-row metrics
    <row_id>.cls   the class label as text, when the row has one
    <row_id>.txt   the prompt, when the row has one

A shard closes at ``samples_per_shard`` samples or ``max_shard_bytes``, whichever comes first.
Members are written in row order with fixed metadata (mtime = the version's creation time, owner
0), so exporting a version twice gives the same bytes.

Image folder (``datasets``' ``imagefolder`` convention, and ``ray.data.read_images``)::

    train/000000/<row_id>.png ... train/000000/metadata.jsonl   {"file_name": "<row_id>.png", ...}
    train/000001/...

One folder and one metadata file per ``samples_per_shard`` rows keeps memory and folder sizes
bounded. A column that is null in every row of the version (``class_label`` of an unlabelled set)
is left out of the metadata: ``datasets`` cannot type a column it has only seen empty.

Both write ``export.json`` last: what was exported (``ref``, format, files and row counts, the
WebDataset brace pattern). A destination holding another version's export is refused.
Destinations are any URI the storage wrapper takes (a local folder, ``s3://bucket/prefix``).
"""

from __future__ import annotations

import io
import json
import math
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal

import pyarrow as pa
import pyarrow.parquet as pq

from augflow.schemas.errors import ExportError
from augflow.schemas.registry import RegistryEntry
from augflow.tasks.storage import Storage, with_retries

Format = Literal["webdataset", "imagefolder"]
FORMATS: tuple[str, ...] = ("webdataset", "imagefolder")
MANIFEST = "export.json"
SPLIT = "train"
DEFAULT_SAMPLES_PER_SHARD = 1000
DEFAULT_MAX_SHARD_BYTES = 256 * 2**20
_READ_BATCH = 64


@dataclass(frozen=True)
class ExportResult:
    ref: str
    format: str
    uri: str  # the destination root
    files: tuple[str, ...]  # keys under the destination, shards or metadata files
    num_rows: int
    manifest_uri: str
    #: WebDataset brace URL of every shard, e.g. ``s3://b/x/cats-v1-{000000..000003}.tar``
    pattern: str | None = None


def export_version(
    storage: Storage,
    entry: RegistryEntry,
    fmt: str,
    dest: str,
    *,
    samples_per_shard: int = DEFAULT_SAMPLES_PER_SHARD,
    max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES,
) -> ExportResult:
    """Write ``entry`` (read from ``storage``) to ``dest`` in format ``fmt``."""
    if fmt not in FORMATS:
        raise ExportError(f"format {fmt!r} is not one of: {', '.join(FORMATS)}")
    if samples_per_shard < 1 or max_shard_bytes < 1:
        raise ExportError("samples per shard and the maximum shard size must be at least 1")
    out = Storage(dest)
    if out.root == storage.root or any(
        out.root.startswith(f"{storage.root}/{top}") for top in ("registry", "runs")
    ):
        raise ExportError(
            f"export destination {out.root} is the output root or inside its registry or runs; "
            "export to a folder of its own"
        )
    _check_destination(out, entry)
    if fmt == "webdataset":
        files = _webdataset(storage, entry, out, samples_per_shard, max_shard_bytes)
        pattern = _brace(out, entry, len(files))
    else:
        files = _imagefolder(storage, entry, out, samples_per_shard)
        pattern = None
    num_rows = sum(n for _, n, _ in files)
    manifest: dict[str, Any] = {
        "format_version": 1,
        "ref": entry.ref,
        "format": fmt,
        "num_rows": num_rows,
        "files": [{"key": k, "rows": n, "bytes": b} for k, n, b in files],
        "request_hash": entry.request_hash,
    }
    if pattern:
        manifest["pattern"] = pattern.removeprefix(out.root + "/")
    out.write_json(MANIFEST, manifest)
    return ExportResult(
        ref=entry.ref,
        format=fmt,
        uri=out.root,
        files=tuple(k for k, _, _ in files),
        num_rows=num_rows,
        manifest_uri=out.uri(MANIFEST),
        pattern=pattern,
    )


def _check_destination(out: Storage, entry: RegistryEntry) -> None:
    try:
        previous = out.read_json(MANIFEST)
    except FileNotFoundError:
        return
    except ValueError:
        previous = {}
    ref = previous.get("ref") if isinstance(previous, dict) else None
    if ref != entry.ref:
        raise ExportError(
            f"{out.uri(MANIFEST)} records an export of {ref or 'something else'}; export "
            f"{entry.ref} to an empty destination (or remove that export first)"
        )


# --- rows --------------------------------------------------------------------------------------


def _rows(
    storage: Storage, entry: RegistryEntry, columns: list[str] | None = None
) -> Iterator[dict[str, Any]]:
    """The version's rows in file order, a batch at a time (one data file in memory at most)."""
    for f in entry.files:
        table = storage.read_parquet([f.key], columns=columns)
        for batch in table.to_batches(max_chunksize=_READ_BATCH):
            yield from batch.to_pylist()


def _lineage(row: dict[str, Any]) -> dict[str, Any]:
    return {k: _jsonable(v) for k, v in row.items() if k != "image"}


def _jsonable(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return None  # JSON has no NaN/inf; the row's has_nan flag says what happened
    return v


def _image(row: dict[str, Any]) -> tuple[bytes, str]:
    cell = row.get("image") or {}
    data = cell.get("bytes") if isinstance(cell, dict) else None
    if not data:
        raise ExportError(f"row {row.get('row_id')} has no image bytes; registered rows always do")
    return data, _extension(data)


def _extension(data: bytes) -> str:
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if data.startswith(b"\xff\xd8\xff"):
        return "jpg"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    return "bin"


# --- webdataset --------------------------------------------------------------------------------


def _shard_key(entry: RegistryEntry, index: int) -> str:
    return f"{entry.name}-{entry.version}-{index:06d}.tar"


def _brace(out: Storage, entry: RegistryEntry, n: int) -> str:
    if n == 1:
        return out.uri(_shard_key(entry, 0))
    return out.uri(f"{entry.name}-{entry.version}-{{{0:06d}..{n - 1:06d}}}.tar")


class _Tar:
    """One shard being built in memory (bounded by ``max_shard_bytes`` plus one sample)."""

    def __init__(self, mtime: int) -> None:
        self.buf = io.BytesIO()
        # closed by close(), after the many add() calls that build the shard
        self.tar = tarfile.open(fileobj=self.buf, mode="w", format=tarfile.USTAR_FORMAT)  # noqa: SIM115
        self.mtime = mtime
        self.samples = 0

    def add(self, name: str, data: bytes) -> None:
        info = tarfile.TarInfo(name)
        info.size = len(data)
        info.mtime = self.mtime
        info.mode = 0o644
        info.uid = info.gid = 0
        info.uname = info.gname = ""
        self.tar.addfile(info, io.BytesIO(data))

    def close(self) -> bytes:
        self.tar.close()
        return self.buf.getvalue()


def _webdataset(
    storage: Storage,
    entry: RegistryEntry,
    out: Storage,
    samples_per_shard: int,
    max_shard_bytes: int,
) -> list[tuple[str, int, int]]:
    mtime = int(entry.created_at.timestamp())
    written: list[tuple[str, int, int]] = []
    shard = _Tar(mtime)

    def flush() -> None:
        nonlocal shard
        data = shard.close()
        key = _shard_key(entry, len(written))
        out.write_bytes(key, data)
        written.append((key, shard.samples, len(data)))
        shard = _Tar(mtime)

    for row in _rows(storage, entry):
        data, ext = _image(row)
        key = str(row["row_id"])
        shard.add(f"{key}.{ext}", data)
        shard.add(f"{key}.json", json.dumps(_lineage(row), sort_keys=True).encode())
        if row.get("class_label") is not None:
            shard.add(f"{key}.cls", str(int(row["class_label"])).encode())
        if row.get("prompt"):
            shard.add(f"{key}.txt", str(row["prompt"]).encode())
        shard.samples += 1
        if shard.samples >= samples_per_shard or shard.buf.tell() >= max_shard_bytes:
            flush()
    if shard.samples or not written:
        flush()
    return written


# --- image folder ------------------------------------------------------------------------------


def _null_columns(storage: Storage, entry: RegistryEntry) -> set[str]:
    """Columns that are null in every row of the version (read without the image bytes)."""
    if not entry.files:
        return set()
    names = [n for n in _schema(storage, entry.files[0].key).names if n != "image"]
    seen: set[str] = set()
    for f in entry.files:
        table = storage.read_parquet([f.key], columns=names)
        seen |= {n for n in names if table.column(n).null_count < table.num_rows}
    return set(names) - seen


def _schema(storage: Storage, key: str) -> pa.Schema:
    def read() -> pa.Schema:
        with storage.fs.open(storage.path(key), "rb") as fh:
            return pq.read_schema(fh)

    return with_retries("read the schema of", storage.uri(key), read)


def _imagefolder(
    storage: Storage, entry: RegistryEntry, out: Storage, samples_per_shard: int
) -> list[tuple[str, int, int]]:
    drop = _null_columns(storage, entry)
    written: list[tuple[str, int, int]] = []
    lines: list[bytes] = []

    def folder() -> str:
        return f"{SPLIT}/{len(written):06d}"

    def flush() -> None:
        data = b"".join(lines)
        key = f"{folder()}/metadata.jsonl"
        out.write_bytes(key, data)
        written.append((key, len(lines), len(data)))
        lines.clear()

    for row in _rows(storage, entry):
        data, ext = _image(row)
        name = f"{row['row_id']}.{ext}"
        out.write_bytes(f"{folder()}/{name}", data)
        meta = {"file_name": name} | {k: v for k, v in _lineage(row).items() if k not in drop}
        lines.append((json.dumps(meta, sort_keys=False) + "\n").encode())
        if len(lines) >= samples_per_shard:
            flush()
    if lines:
        flush()
    return written
