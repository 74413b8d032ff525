"""The dataset registry: immutable versions published by one atomic write.

An entry lives at ``registry/<dataset>/versions/<version>.json`` under the output root. Publishing
is exactly one exclusive create of that key (a conditional ``If-None-Match`` PUT on S3, a hard link
locally), so a version appears whole or not at all and is never overwritten. Data folders are never
listed to find a dataset: the entry names its files. Listing the registry's own entries (to resolve
``latest`` or to show what exists) is fine.
"""

from __future__ import annotations

import functools
import logging
from datetime import UTC, datetime
from pathlib import Path

from pydantic import BaseModel, ConfigDict, ValidationError

from augflow.schemas.errors import (
    AugflowError,
    CommitConflictError,
    QualityGateError,
    RegistryError,
    VersionNotFoundError,
)
from augflow.schemas.names import LATEST, check_dataset_name, check_version, is_dataset_name
from augflow.schemas.quality import QualitySummary
from augflow.schemas.records import ShardResult
from augflow.schemas.registry import DatasetSummary, FileRef, ModelInfo, RegistryEntry
from augflow.schemas.request import AugmentRequest
from augflow.tasks import layout
from augflow.tasks.storage import Storage

log = logging.getLogger(__name__)


class RegisterOutcome(BaseModel):
    """``created`` when this call published the version, False when an identical entry was there
    before (a retried or concurrent run). ``entry`` is what the registry holds."""

    model_config = ConfigDict(frozen=True)

    created: bool
    uri: str
    entry: RegistryEntry
    #: the dataset card at the root, refreshed by this registration (None if it could not be)
    card_uri: str | None = None


# --- code version ------------------------------------------------------------------------------


@functools.lru_cache(maxsize=1)
def code_version() -> str:
    """``augflow <version>+g<commit>`` when discoverable, else ``augflow <version>`` / "unknown"."""
    try:
        from importlib.metadata import version

        pkg = version("augflow")
    except Exception:
        pkg = "unknown"
    commit = _git_commit(Path(__file__).resolve().parent.parent)
    if pkg == "unknown" and commit is None:
        return "unknown"
    return f"augflow {pkg}" + (f"+g{commit[:12]}" if commit else "")


def _git_commit(start: Path) -> str | None:
    # Read .git directly rather than running git: no subprocess, and no git on PATH is fine.
    try:
        for d in (start, *start.parents):
            git = d / ".git"
            if git.is_file():  # a worktree: "gitdir: <path>"
                git = Path(git.read_text().split(":", 1)[1].strip())
            if not git.is_dir():
                continue
            head = (git / "HEAD").read_text().strip()
            if not head.startswith("ref:"):
                return head or None
            ref = head.split(":", 1)[1].strip()
            common = git
            if (git / "commondir").is_file():
                common = (git / (git / "commondir").read_text().strip()).resolve()
            for base in (git, common):
                if (base / ref).is_file():
                    return (base / ref).read_text().strip()
                packed = base / "packed-refs"
                if packed.is_file():
                    for line in packed.read_text().splitlines():
                        parts = line.split()
                        if len(parts) == 2 and parts[1] == ref:
                            return parts[0]
            return None
    except OSError:
        return None
    return None


# --- building an entry -------------------------------------------------------------------------


def build_entry(
    storage: Storage,
    request: AugmentRequest,
    version: str,
    results: list[ShardResult],
    quality: QualitySummary,
    created_at: datetime | None = None,
) -> RegistryEntry:
    """The entry for a run from its committed shard results and the gate's verdict.

    Files are sorted by key so the entry does not depend on the order shards finished in.
    """
    files = sorted(
        # only files with rows: a fully quarantined shard has none (older runs wrote 0-row files)
        (
            FileRef(key=r.data_file, rows=r.num_rows, bytes=r.data_bytes)
            for r in results
            if r.data_file and r.num_rows
        ),
        key=lambda f: f.key,
    )
    quarantine = sorted(
        (
            FileRef(
                key=r.quarantine_file,
                rows=r.num_quarantined,
                bytes=storage.size(r.quarantine_file),
            )
            for r in results
            if r.quarantine_file
        ),
        key=lambda f: f.key,
    )
    return RegistryEntry(
        name=request.dataset,
        version=version,
        created_at=created_at or datetime.now(UTC),
        files=files,
        quarantine_files=quarantine,
        num_rows=sum(r.num_rows for r in results),
        num_quarantined=sum(r.num_quarantined for r in results),
        request=request.model_dump(mode="json"),
        request_hash=request.request_hash,
        code_version=code_version(),
        model=_model_info(request, results),
        quality=quality,
    )


def _model_info(request: AugmentRequest, results: list[ShardResult]) -> ModelInfo:
    # Workers report what they actually loaded (the resolved revision pin and scheduler), which is
    # more useful than the request when it left them unset.
    revision = next((r.model_revision for r in results if r.model_revision), None)
    scheduler = next((r.scheduler for r in results if r.scheduler), None)
    return ModelInfo(
        id=request.model.id,
        revision=revision or request.model.revision,
        scheduler=scheduler or request.model.scheduler,
    )


# --- publishing ---------------------------------------------------------------------------------


def register_version(storage: Storage, entry: RegistryEntry) -> RegisterOutcome:
    """Publish ``entry`` with one exclusive create; never overwrites.

    Re-registering the same version of the same request (a retry, or a concurrent run of the same
    request) returns ``created=False``; a *different* entry at that version raises
    :class:`CommitConflictError`. An entry whose checks did not pass is refused. Either way the
    dataset card at the root is then refreshed from the registry (:mod:`augflow.tasks.card`).
    """
    outcome = _publish(storage, entry)
    return outcome.model_copy(update={"card_uri": _refresh_card(storage)})


def _publish(storage: Storage, entry: RegistryEntry) -> RegisterOutcome:
    if not entry.quality.passed:
        # The flow should never get here with a failed gate; refusing keeps the invariant local.
        raise QualityGateError(
            entry.name, entry.quality.failed, storage.uri(entry.quality.report_key)
        )
    key = layout.registry_entry(entry.name, entry.version)
    uri = storage.uri(key)
    try:
        # Already registered (a retried or twin run): no order number to claim.
        return _already(read_entry(storage, key), entry, uri)
    except FileNotFoundError:
        pass
    entry = entry.model_copy(
        update={"sequence": claim_sequence(storage, entry.name, entry.version)}
    )
    try:
        # False means these very bytes were already there. With this call's created_at and
        # sequence number in them, that is this call's own create whose response was lost.
        storage.create_json_exclusive(key, entry.model_dump(mode="json"))
    except CommitConflictError:
        # Same version, different bytes: usually only created_at differs (a retried run).
        return _already(read_entry(storage, key), entry, uri)
    return RegisterOutcome(created=True, uri=uri, entry=entry)


def _refresh_card(storage: Storage) -> str | None:
    """Bring the root's dataset card up to date; a registration is complete without it.

    The version is published (immutable) by the time this runs, so a card that cannot be written
    is logged with the command that rewrites it rather than failing a registered run.
    """
    # card.py reads the registry through this module, so it is imported here, not at the top.
    from augflow.tasks.card import refresh_card

    try:
        return refresh_card(storage).uri
    except AugflowError as exc:
        log.warning(
            "the dataset card under %s was not updated (%s); `augflow datasets card --root %s` "
            "rewrites it",
            storage.root,
            exc,
            storage.root,
        )
        return None


def _already(existing: RegistryEntry, entry: RegistryEntry, uri: str) -> RegisterOutcome:
    if existing.same_content(entry):
        return RegisterOutcome(created=False, uri=uri, entry=existing)
    raise CommitConflictError(
        f"{entry.ref} is already registered at {uri} with different content "
        f"(request_hash {existing.request_hash[:12]} vs {entry.request_hash[:12]}, "
        f"{len(existing.files)} vs {len(entry.files)} files); registered versions are "
        "immutable — change the request to get a new version"
    ) from None


# --- order --------------------------------------------------------------------------------------
# `@latest` must name one version, the last one published, whatever the clocks of the machines
# that registered them say (two registrations in the same second, skewed clocks). So each version
# claims an order number before its entry is published: number n is an exclusive create of
# registry/<name>/sequence/<n>.json holding the version, and a writer that finds n taken tries
# n+1. Claims are totally ordered by construction, and the numbers only grow. A claim whose
# entry never got published (a crash in between) leaves a gap, which orders nothing wrongly.

#: claims one registration may lose in a row to concurrent ones before giving up
MAX_SEQUENCE_CLAIMS = 10_000


def claim_sequence(storage: Storage, name: str, version: str) -> int:
    """The next free order number of dataset ``name``, claimed for ``version``."""
    taken = [
        n for k in storage.list(layout.registry_sequences(name)) if (n := layout.sequence_of(k))
    ]
    number = max(taken, default=0) + 1
    for _ in range(MAX_SEQUENCE_CLAIMS):
        try:
            # Same bytes already there (a twin registration of this version) also counts as ours.
            storage.create_json_exclusive(
                layout.registry_sequence(name, number), {"version": version}
            )
            return number
        except CommitConflictError:
            number += 1
    raise RegistryError(
        f"could not claim an order number for {name}@{version} under "
        f"{storage.uri(layout.registry_sequences(name))}: {MAX_SEQUENCE_CLAIMS} concurrent "
        "registrations won before it; retry"
    )


# --- reading -----------------------------------------------------------------------------------


def read_entry(storage: Storage, key: str) -> RegistryEntry:
    """The entry stored at ``key``; FileNotFoundError when there is none."""
    try:
        data = storage.read_json(key)
    except FileNotFoundError:
        raise
    except ValueError as exc:
        raise RegistryError(f"registry entry {storage.uri(key)} is not valid JSON: {exc}") from exc
    try:
        return RegistryEntry.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "entry"
        raise RegistryError(
            f"registry entry {storage.uri(key)} is malformed at `{where}`: {first['msg']}"
        ) from exc


def _version_keys(storage: Storage, name: str) -> list[str]:
    # Locally an in-flight exclusive create leaves `<v>.json.tmp-<uuid>` beside the entries.
    return [k for k in storage.list(layout.registry_versions(name)) if k.endswith(".json")]


def entry_keys(storage: Storage) -> list[str]:
    """The keys of every registry entry under the root, sorted (listings only, no reads)."""
    return sorted(k for name in dataset_names(storage) for k in _version_keys(storage, name))


def has_registry(storage: Storage) -> bool:
    """Whether anything was ever registered under the root (the registry prefix has objects)."""
    return bool(storage.list(layout.REGISTRY))


def list_versions(storage: Storage, name: str) -> list[RegistryEntry]:
    """Every registered version of ``name``, oldest first: in the order they were published
    (their claimed sequence numbers); versions from before sequence numbers first, by
    created_at then version."""
    entries = []
    for key in _version_keys(storage, name):
        try:
            entries.append(read_entry(storage, key))
        except FileNotFoundError:
            continue  # removed between list and read; not ours to publish
    return sorted(entries, key=lambda e: e.order_key)


def dataset_names(storage: Storage) -> list[str]:
    """Names of the datasets with a folder in the registry (valid names only)."""
    names = (layout.dataset_name_of(k) for k in storage.list(layout.REGISTRY))
    return sorted(n for n in names if is_dataset_name(n))


def list_datasets(storage: Storage) -> list[DatasetSummary]:
    """One summary per registered dataset, by name; datasets without versions are left out."""
    out = []
    for name in dataset_names(storage):
        versions = list_versions(storage, name)
        if not versions:
            continue
        latest = versions[-1]
        out.append(
            DatasetSummary(
                name=name,
                num_versions=len(versions),
                latest_version=latest.version,
                latest_num_rows=latest.num_rows,
                created_at=latest.created_at,
            )
        )
    return out


def get_version(storage: Storage, name: str, version: str = LATEST) -> RegistryEntry:
    """The entry of ``name@version``; ``latest`` is the last one published (:func:`list_versions`)."""
    check_dataset_name(name)
    if version != LATEST:
        check_version(version, f"version of dataset {name!r}")
        try:
            return read_entry(storage, layout.registry_entry(name, version))
        except FileNotFoundError:
            pass
    versions = list_versions(storage, name)
    if not versions:
        known = [s for s in dataset_names(storage) if s != name]
        hint = f" (registered datasets: {', '.join(known)})" if known else ""
        raise VersionNotFoundError(
            f"no dataset {name!r} is registered under {storage.root}{hint}; "
            "run `augflow datasets list`"
        )
    if version == LATEST:
        return versions[-1]
    raise VersionNotFoundError(
        f"dataset {name!r} has no version {version!r}; registered: "
        + ", ".join(e.version for e in versions)
    )


def file_uris(storage: Storage, entry: RegistryEntry) -> list[str]:
    """The data file URIs of ``entry`` under ``storage``'s root, ready for
    ``load_dataset("parquet", data_files=...)``, pyarrow or Ray Data."""
    return [storage.uri(f.key) for f in entry.files]
