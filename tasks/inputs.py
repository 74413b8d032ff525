"""List the input items of a request: image files under a folder/prefix, Parquet rows, or the rows
of a registered version. Listing reads names (and, for Parquet, row counts/ids), never pixels."""

from __future__ import annotations

import posixpath

import pyarrow.parquet as pq

from augflow.schemas.errors import InputError
from augflow.schemas.records import SourceItem
from augflow.schemas.request import AugmentRequest
from augflow.tasks.register import get_version
from augflow.tasks.storage import Storage, filesystem_for, normalize_uri

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")
ID_COLUMNS = ("row_id", "id")


def list_sources(request: AugmentRequest) -> list[SourceItem]:
    """Every input item, sorted by its stable ``source_id``."""
    ref = request.input_ref()
    if ref is not None:
        items = _registered_sources(request, *ref)
    else:
        items = _uri_sources(request.inputs or "")
    if not items:
        raise InputError(
            f"inputs {request.inputs!r} holds no images; put {', '.join(IMAGE_EXTENSIONS)} files or "
            "Parquet files with an `image` column there"
        )
    ids = [i.source_id for i in items]
    if len(set(ids)) != len(ids):
        raise InputError(f"inputs {request.inputs!r} have duplicate source ids; ids must be unique")
    return sorted(items, key=lambda i: i.source_id)


def _uri_sources(uri: str) -> list[SourceItem]:
    root = normalize_uri(uri)
    fs, path = filesystem_for(root)
    try:
        if fs.isfile(path):
            if path.endswith(".parquet"):
                return _parquet_rows(fs, path, root, posixpath.basename(path))
            if path.lower().endswith(IMAGE_EXTENSIONS):
                return [SourceItem(source_id=posixpath.basename(path), uri=root)]
            raise InputError(f"inputs {uri!r} is a file but neither an image nor a .parquet file")
        if not fs.isdir(path):
            raise InputError(
                f"inputs {uri!r} does not exist; give a folder, prefix or file of images"
            )
        files = sorted(fs.find(path))
    except InputError:
        raise
    except Exception as exc:
        raise InputError(f"cannot list inputs {uri!r}: {type(exc).__name__}: {exc}") from exc
    base = path.rstrip("/") + "/"
    proto = root.split("://", 1)[0]
    items: list[SourceItem] = []
    for f in files:
        rel = f.removeprefix(base)
        if posixpath.basename(rel).startswith("."):
            continue
        if f.lower().endswith(IMAGE_EXTENSIONS):
            items.append(SourceItem(source_id=rel, uri=f"{proto}://{f}"))
        elif f.endswith(".parquet"):
            items.extend(_parquet_rows(fs, f, f"{proto}://{f}", rel))
    return items


def _parquet_rows(fs, path: str, uri: str, label: str) -> list[SourceItem]:
    with fs.open(path, "rb") as fh:
        pf = pq.ParquetFile(fh)
        names = pf.schema_arrow.names
        if "image" not in names:
            raise InputError(f"{uri} has no `image` column (columns: {', '.join(names)})")
        id_col = next((c for c in ID_COLUMNS if c in names), None)
        if id_col is None:
            ids = [f"{label}#{i}" for i in range(pf.metadata.num_rows)]
        else:
            ids = [str(v) for v in pf.read(columns=[id_col]).column(0).to_pylist()]
    return [SourceItem(source_id=sid, uri=uri, row=i) for i, sid in enumerate(ids)]


def _registered_sources(request: AugmentRequest, name: str, version: str) -> list[SourceItem]:
    storage = Storage(request.output)
    entry = get_version(storage, name, version)
    items: list[SourceItem] = []
    for f in entry.files:
        uri = storage.uri(f.key)
        items.extend(_parquet_rows(*filesystem_for(uri), uri, f.key))
    return items
