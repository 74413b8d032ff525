"""List the input items of a request: the objects under a folder/prefix, Parquet rows, or the rows
of a registered version. Listing reads names, sizes and (for Parquet) row ids, never pixels.

**Every object under an inputs folder/prefix is accounted for.** It becomes

- input items: a Parquet file (named ``*.parquet``, any case) gives one item per row; any other
  object gives one item, whatever its name. Whether it is an image is decided later from its
  content (:mod:`augflow.models.images`), so a ``.gif``, a ``.txt`` or a file with no extension
  ends as an output row or a quarantine row with a reason, never silently dropped. An object the
  listing already knows to be unusable (not a regular file, a broken link, too large, an
  unreadable Parquet file) is an item with ``rejected`` set, quarantined without being read.
- or a **counted skip**, only by one of the documented rules in :data:`SKIP_RULES`.

So: input items = objects - skips (+ Parquet rows - Parquet files). The plan carries the skip
counts by reason; ``augflow plan`` and the run summary print them.
"""

from __future__ import annotations

import os
import posixpath
import stat
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.parquet as pq

from augflow.models.images import MAX_FILE_BYTES
from augflow.schemas.errors import InputError, RegistryError
from augflow.schemas.records import SourceItem
from augflow.schemas.request import MAX_INPUT_ITEMS, AugmentRequest
from augflow.tasks.register import get_version
from augflow.tasks.storage import Storage, filesystem_for, normalize_uri

ID_COLUMNS = ("row_id", "id")

SKIP_HIDDEN = "hidden: a name in its path starts with '.' (e.g. .DS_Store, .git/)"
SKIP_FOLDER_MARKER = "folder marker: an empty object whose name ends in '/'"
SKIP_DATASET_METADATA = "dataset metadata: _SUCCESS, _metadata or _common_metadata"
SKIP_LINKED_FOLDER = "symbolic link to a folder: not followed (it could loop or repeat inputs)"
SKIP_OUTPUT_ROOT = "inside the request's own output root"

#: The only rules that leave an object out of a run without a row or a quarantine row. Each is
#: something no one means as an input: OS and tool litter (.DS_Store, .git, ._resource forks),
#: S3 console "folders", the markers Spark/Hadoop/pyarrow write beside Parquet datasets (pyarrow's
#: own dataset discovery ignores them), links that would loop, and augflow's own outputs when the
#: output root lies inside the inputs.
SKIP_RULES: tuple[str, ...] = (
    SKIP_HIDDEN,
    SKIP_FOLDER_MARKER,
    SKIP_DATASET_METADATA,
    SKIP_LINKED_FOLDER,
    SKIP_OUTPUT_ROOT,
)
DATASET_METADATA_NAMES = frozenset({"_SUCCESS", "_metadata", "_common_metadata"})


@dataclass
class InputListing:
    """The input items (sorted by ``source_id``) and the objects skipped by rule, by reason."""

    items: list[SourceItem]
    skipped: dict[str, int] = field(default_factory=dict)

    @property
    def num_skipped(self) -> int:
        return sum(self.skipped.values())


@dataclass(frozen=True)
class _Entry:
    """One object under the inputs root as the listing sees it."""

    rel: str  # path relative to the root, '/'-separated
    uri: str
    path: str  # the filesystem's own path of the object
    size: int | None
    kind: str  # file | other | broken-link | linked-folder | marker


def list_sources(request: AugmentRequest) -> list[SourceItem]:
    """Every input item, sorted by its stable ``source_id``."""
    return list_inputs(request).items


def list_inputs(request: AugmentRequest) -> InputListing:
    """Every input item and every skip; InputError when there is nothing to work on."""
    ref = request.input_ref()
    if ref is not None:
        listing = InputListing(_registered_sources(request, *ref))
    else:
        listing = _uri_listing(request.inputs or "", request.output)
    if not listing.items:
        raise InputError(_nothing_there(request.inputs, listing.skipped))
    ids = [i.source_id for i in listing.items]
    if len(set(ids)) != len(ids):
        dup = next(s for s, n in Counter(ids).items() if n > 1)
        raise InputError(
            f"inputs {request.inputs!r} have duplicate source ids (e.g. {dup!r}); ids must be unique"
        )
    listing.items.sort(key=lambda i: i.source_id)
    return listing


def check_inputs(request: AugmentRequest) -> None:
    """Fail fast (InputError) when the inputs cannot work, without listing all of them.

    The registered version exists, the file or folder exists, a Parquet file has an ``image``
    column, a folder holds at least one object that is not skipped. What the full listing finds
    later (duplicate ids, too many items) is still checked by :func:`list_inputs`.
    """
    ref = request.input_ref()
    if request.inputs is None:
        return
    if ref is not None:
        _entry_of(request, *ref)
        return
    root = normalize_uri(request.inputs)
    fs, path = filesystem_for(root)
    if _is_file(fs, path, request.inputs):
        if _is_parquet(path):
            _parquet_rows(fs, path, root, posixpath.basename(path), strict=True)
        return
    skipped: Counter[str] = Counter()
    for entry in _entries(fs, path, root, request.inputs, lazy=True):
        reason = _skip_reason(entry, _output_prefix(root, request.output))
        if reason is None:
            return
        skipped[reason] += 1
    raise InputError(_nothing_there(request.inputs, dict(skipped)))


def _nothing_there(inputs: str | None, skipped: dict[str, int]) -> str:
    msg = (
        f"inputs {inputs!r} holds no input files; put images, or Parquet files with an `image` "
        "column, there"
    )
    if skipped:
        msg += " (skipped by rule: " + "; ".join(f"{n} {r}" for r, n in skipped.items()) + ")"
    return msg


# --- folders, prefixes and single files ------------------------------------------------------


def _uri_listing(uri: str, output: str) -> InputListing:
    root = normalize_uri(uri)
    fs, path = filesystem_for(root)
    if _is_file(fs, path, uri):
        # Named explicitly, so no skip rule applies: a single Parquet file or any other file.
        name = posixpath.basename(path)
        if _is_parquet(path):
            return InputListing(_parquet_rows(fs, path, root, name, strict=True))
        return InputListing([SourceItem(source_id=name, uri=root)])
    out_prefix = _output_prefix(root, output)
    items: list[SourceItem] = []
    skipped: Counter[str] = Counter()
    for entry in _entries(fs, path, root, uri):
        reason = _skip_reason(entry, out_prefix)
        if reason is not None:
            skipped[reason] += 1
            continue
        items.extend(_items_of(fs, entry))
        if len(items) > MAX_INPUT_ITEMS:
            raise InputError(
                f"inputs {uri!r} hold more than {MAX_INPUT_ITEMS} items; one request plans at "
                "most that many: split the inputs over several requests (sub-folders)"
            )
    return InputListing(items, dict(skipped))


def _is_file(fs, path: str, uri: str) -> bool:
    try:
        if fs.isfile(path):
            return True
        if fs.isdir(path):
            return False
    except Exception as exc:
        raise InputError(f"cannot list inputs {uri!r}: {type(exc).__name__}: {exc}") from exc
    raise InputError(f"inputs {uri!r} does not exist; give a folder, prefix or file of images")


def _is_parquet(path: str) -> bool:
    return path.lower().endswith(".parquet")


def _output_prefix(inputs_root: str, output: str) -> str | None:
    """The output root as a path relative to the inputs root, when it lies inside it."""
    out = normalize_uri(output).rstrip("/")
    base = inputs_root.rstrip("/")
    if out == base:
        return ""  # the inputs are the output root itself: nothing in it is an input
    return out.removeprefix(base + "/") + "/" if out.startswith(base + "/") else None


def _skip_reason(entry: _Entry, out_prefix: str | None) -> str | None:
    parts = entry.rel.rstrip("/").split("/")
    if any(p.startswith(".") for p in parts):
        return SKIP_HIDDEN
    if out_prefix is not None and (entry.rel + "/").startswith(out_prefix):
        return SKIP_OUTPUT_ROOT
    if entry.kind == "marker":
        return SKIP_FOLDER_MARKER
    if entry.kind == "linked-folder":
        return SKIP_LINKED_FOLDER
    if parts[-1] in DATASET_METADATA_NAMES:
        return SKIP_DATASET_METADATA
    return None


def _items_of(fs, entry: _Entry) -> list[SourceItem]:
    """The input items one (not skipped) object gives."""
    rejected = None
    if entry.kind == "other":
        rejected = "not a regular file (a FIFO, socket or device); only files are read"
    elif entry.kind == "broken-link":
        rejected = "a symbolic link whose target does not exist"
    elif entry.kind == "bad-name":
        rejected = "its name is not valid UTF-8; rename the file"
    elif entry.size is not None and entry.size > MAX_FILE_BYTES:
        rejected = (
            f"too large: {entry.size} bytes exceeds the {MAX_FILE_BYTES / 2**20:g} MiB file limit"
        )
    elif _is_parquet(entry.rel):
        return _parquet_rows(fs, entry.path, entry.uri, entry.rel, strict=False)
    return [SourceItem(source_id=entry.rel, uri=entry.uri, rejected=rejected)]


def _entries(fs, path: str, root: str, uri: str, lazy: bool = False) -> Iterator[_Entry]:
    """The objects under ``path``. ``lazy`` lists an object store folder by folder (for a check
    that stops at the first usable object) instead of in one flat paginated listing."""
    if root.startswith("file://"):
        yield from _local_entries(path)
        return
    proto = root.split("://", 1)[0]
    base = path.rstrip("/") + "/"
    try:
        if lazy:
            for _, _, files in fs.walk(path, detail=True):
                yield from _remote_entries(files, base, proto)
            return
        found = fs.find(path, detail=True)
    except InputError:
        raise
    except Exception as exc:
        raise InputError(f"cannot list inputs {uri!r}: {type(exc).__name__}: {exc}") from exc
    yield from _remote_entries(found, base, proto)


def _remote_entries(found: dict, base: str, proto: str) -> Iterator[_Entry]:
    # find() keys its result by full name, walk() by base name; info["name"] is always full
    for info in sorted(found.values(), key=lambda i: i["name"]):
        name = info["name"]
        rel = name.removeprefix(base)
        size = info.get("size")
        if info.get("type") == "directory":
            continue  # a prefix, not an object
        kind = "marker" if name.endswith("/") and not size else "file"
        yield _Entry(rel=rel, uri=f"{proto}://{name}", path=name, size=size, kind=kind)


def _local_entries(top: str) -> Iterator[_Entry]:
    """Files under a local folder, depth first, without following links to folders."""
    stack = [""]
    while stack:
        rel_dir = stack.pop()
        folder = os.path.join(top, rel_dir) if rel_dir else top
        try:
            with os.scandir(folder) as it:
                found = sorted(it, key=lambda e: e.name)
        except OSError as exc:
            raise InputError(
                f"cannot list input folder {folder!r}: {exc.strerror or exc}; every object under "
                "the inputs must be listable so none is lost"
            ) from None
        subdirs = []
        for e in found:
            rel = f"{rel_dir}/{e.name}" if rel_dir else e.name
            shown = _printable(rel)
            # d_type from the directory listing: no stat per file (sizes are checked when read)
            try:
                if e.is_symlink():
                    try:
                        mode = os.stat(e.path).st_mode
                    except OSError:
                        kind = "broken-link"
                    else:
                        kind = "linked-folder" if stat.S_ISDIR(mode) else _kind(mode)
                elif e.is_dir(follow_symlinks=False):
                    subdirs.append(rel)
                    continue
                else:
                    kind = "file" if e.is_file(follow_symlinks=False) else "other"
            except OSError:
                kind = "other"
            if shown != rel:
                kind = "bad-name"
            full = os.path.join(top, rel)
            yield _Entry(
                rel=shown, uri="file://" + _printable(full), path=full, size=None, kind=kind
            )
        stack.extend(reversed(subdirs))


def _kind(mode: int) -> str:
    return "file" if stat.S_ISREG(mode) else "other"


def _printable(name: str) -> str:
    """``name`` as valid UTF-8 text (undecodable bytes of a local name shown as \\xNN)."""
    try:
        name.encode("utf-8")
        return name
    except UnicodeEncodeError:
        return name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


# --- Parquet files and registered versions ---------------------------------------------------


def _parquet_rows(fs, path: str, uri: str, label: str, *, strict: bool) -> list[SourceItem]:
    """One item per row. A file that cannot be used is an InputError when it is the whole input
    (``strict``), else one rejected item, so it is quarantined and counted like any object."""

    def refuse(why: str) -> list[SourceItem]:
        if strict:
            raise InputError(f"{uri}: {why}")
        return [SourceItem(source_id=label, uri=uri, rejected=why)]

    try:
        with fs.open(path, "rb") as fh:
            pf = pq.ParquetFile(fh)
            names = pf.schema_arrow.names
            if "image" not in names:
                return refuse(
                    f"Parquet file without an `image` column (columns: {', '.join(names)})"
                )
            n = pf.metadata.num_rows
            if n > MAX_INPUT_ITEMS:
                raise InputError(
                    f"{uri} has {n} rows; one request plans at most {MAX_INPUT_ITEMS} items"
                )
            labels = _labels(pf, uri)
            id_col = next((c for c in ID_COLUMNS if c in names), None)
            if id_col is None:
                return [
                    SourceItem(source_id=f"{label}#{i}", uri=uri, row=i, label=labels[i])
                    for i in range(n)
                ]
            values = pf.read(columns=[id_col]).column(0).to_pylist()
    except InputError:
        raise
    except Exception as exc:
        return refuse(f"not a readable Parquet file: {type(exc).__name__}: {exc}")
    nulls = sum(v is None for v in values)
    if nulls:
        raise InputError(
            f"{uri}: column `{id_col}` has {nulls} empty values; source ids must be unique and set"
        )
    return [
        SourceItem(source_id=str(v), uri=uri, row=i, label=labels[i]) for i, v in enumerate(values)
    ]


def _entry_of(request: AugmentRequest, name: str, version: str):
    try:
        return get_version(Storage(request.output), name, version)
    except RegistryError as exc:
        raise InputError(f"inputs {request.inputs!r}: {exc}") from None


def _registered_sources(request: AugmentRequest, name: str, version: str) -> list[SourceItem]:
    storage = Storage(request.output)
    entry = _entry_of(request, name, version)
    items: list[SourceItem] = []
    for f in entry.files:
        uri = storage.uri(f.key)
        items.extend(_parquet_rows(*filesystem_for(uri), uri, f.key, strict=True))
        if len(items) > MAX_INPUT_ITEMS:
            raise InputError(
                f"inputs {request.inputs!r} hold more than {MAX_INPUT_ITEMS} rows; one request "
                "plans at most that many"
            )
    return items


# --- labels (issue 13) ---------------------------------------------------------------------------

#: Integer class-label columns of a Parquet input, first found wins: `label` for a user's labelled
#: set, `class_label` for a registered augflow version used as inputs (its rows' own labels).
LABEL_COLUMNS = ("label", "class_label")


def _labels(pf: pq.ParquetFile, uri: str) -> list[int | None]:
    """Each row's class label (None: no label column, or a null cell)."""
    names = pf.schema_arrow.names
    col = next((c for c in LABEL_COLUMNS if c in names), None)
    if col is None:
        return [None] * pf.metadata.num_rows
    if not pa.types.is_integer(pf.schema_arrow.field(col).type):
        raise InputError(
            f"{uri}: column `{col}` is {pf.schema_arrow.field(col).type}; class labels must be "
            "integers (0, 1, ...); map class names to ids or rename the column"
        )
    values = pf.read(columns=[col]).column(0).to_pylist()
    bad = sorted({v for v in values if v is not None and v < 0})
    if bad:
        raise InputError(f"{uri}: column `{col}` holds negative labels {bad[:5]}; labels are >= 0")
    return values
