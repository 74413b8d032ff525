"""The dataset registry: immutable versions published by one atomic write.

An entry lives at ``registry/<dataset>/versions/<version>.json`` under the output root. Publishing
is exactly one exclusive create of that key (a conditional ``If-None-Match`` PUT on S3, a hard link
locally), so a version appears whole or not at all and is never overwritten. Data folders are never
listed to find a dataset: the entry names its files. Listing the registry's own entries (to resolve
``latest`` or to show what exists) is fine.
"""

from __future__ import annotations

import functools
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from augflow.schemas.errors import (
    CommitConflictError,
    QualityGateError,
    RegistryError,
    VersionNotFoundError,
)
from augflow.schemas.records import ShardResult
from augflow.schemas.request import DATASET_NAME, AugmentRequest
from augflow.tasks.storage import Storage

REGISTRY_PREFIX = "registry"
LATEST = "latest"
VERSION_RE = re.compile(r"^[A-Za-z0-9._-]{1,128}$")


class DatasetRefError(RegistryError, ValueError):
    """A ``name@version`` reference is malformed."""


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class FileRef(_Frozen):
    """One Parquet file of a version (key relative to the output root, uri absolute)."""

    uri: str
    key: str
    rows: int = Field(ge=0)
    bytes: int = Field(ge=0)


class ModelInfo(_Frozen):
    id: str
    revision: str | None = None
    scheduler: str | None = None


class ChecksInfo(_Frozen):
    passed: bool
    failed: list[str] = Field(default_factory=list)
    report_uri: str


class RegistryEntry(_Frozen):
    """One registered, immutable dataset version."""

    name: str
    version: str
    created_at: datetime
    uri: str = Field(description="root URI of the output storage the keys are relative to")
    files: list[FileRef]
    quarantine_files: list[FileRef] = Field(default_factory=list)
    num_rows: int = Field(ge=0)
    num_quarantined: int = Field(ge=0)
    request: dict[str, Any]
    request_hash: str
    code_version: str
    model: ModelInfo
    checks: ChecksInfo

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not DATASET_NAME.match(v):
            raise ValueError(
                f"{v!r} is not a dataset name (lowercase letters, digits, '.', '_', '-')"
            )
        return v

    @field_validator("version")
    @classmethod
    def _version(cls, v: str) -> str:
        # The version becomes part of a storage key, so it must not be able to climb out of it.
        if not VERSION_RE.match(v) or v == LATEST or v.startswith("."):
            raise ValueError(
                f"{v!r} is not a version: use letters, digits, '.', '_', '-' "
                f"(not starting with '.'; {LATEST!r} is reserved)"
            )
        return v

    @field_validator("created_at")
    @classmethod
    def _utc(cls, v: datetime) -> datetime:
        if v.tzinfo is None:
            raise ValueError("created_at must carry a timezone (UTC)")
        return v.astimezone(UTC)

    @property
    def ref(self) -> str:
        return f"{self.name}@{self.version}"

    @property
    def file_uris(self) -> list[str]:
        """The data file URIs, ready for ``load_dataset("parquet", data_files=...)`` or pyarrow."""
        return [f.uri for f in self.files]

    def same_content(self, other: RegistryEntry) -> bool:
        """Whether two entries describe the same version (timestamps aside)."""
        return (
            self.name == other.name
            and self.version == other.version
            and self.request_hash == other.request_hash
            and self.files == other.files
        )


class RegisterOutcome(_Frozen):
    """``created`` when this call published the version; ``already_registered`` when an identical
    entry was there before (a retried or concurrent run). ``entry`` is what the registry holds."""

    created: bool
    already_registered: bool
    uri: str
    entry: RegistryEntry


class DatasetSummary(_Frozen):
    name: str
    num_versions: int
    latest_version: str
    latest_num_rows: int
    created_at: datetime


# --- keys --------------------------------------------------------------------------------------


def entry_key(name: str, version: str) -> str:
    return f"{REGISTRY_PREFIX}/{name}/versions/{version}.json"


def _versions_prefix(name: str) -> str:
    return f"{REGISTRY_PREFIX}/{name}/versions"


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
    checks: ChecksInfo | Any,
    created_at: datetime | None = None,
) -> RegistryEntry:
    """The entry for a run from its committed shard results and its quality report.

    ``checks`` is a :class:`ChecksInfo` or anything with ``passed``, ``failed`` and ``report_uri``
    (the :class:`~augflow.tasks.validate.QualityReport`). Files are sorted by key so the entry does
    not depend on the order shards finished in.
    """
    if not isinstance(checks, ChecksInfo):
        checks = ChecksInfo(
            passed=bool(checks.passed), failed=list(checks.failed), report_uri=checks.report_uri
        )
    files = sorted(
        (
            FileRef(
                uri=storage.uri(r.data_file), key=r.data_file, rows=r.num_rows, bytes=r.data_bytes
            )
            for r in results
        ),
        key=lambda f: f.key,
    )
    quarantine = sorted(
        (
            FileRef(
                uri=storage.uri(r.quarantine_file),
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
        uri=storage.root,
        files=files,
        quarantine_files=quarantine,
        num_rows=sum(r.num_rows for r in results),
        num_quarantined=sum(r.num_quarantined for r in results),
        request=request.model_dump(mode="json"),
        request_hash=request.request_hash,
        code_version=code_version(),
        model=_model_info(request, results),
        checks=checks,
    )


def _model_info(request: AugmentRequest, results: list[ShardResult]) -> ModelInfo:
    # Workers report what they actually loaded (the resolved revision pin and scheduler), which is
    # more useful than the request when it left them unset.
    revision = next((r.model_revision for r in results if getattr(r, "model_revision", "")), None)
    scheduler = next((r.scheduler for r in results if getattr(r, "scheduler", "")), None)
    return ModelInfo(
        id=request.model.id,
        revision=revision or request.model.revision,
        scheduler=scheduler or request.model.scheduler,
    )


# --- publishing ---------------------------------------------------------------------------------


def register_version(storage: Storage, entry: RegistryEntry) -> RegisterOutcome:
    """Publish ``entry`` with one exclusive create; never overwrites.

    Re-registering the same version of the same request (a retry, or a concurrent run of the same
    request) is ``already_registered``; a *different* entry at that version raises
    :class:`CommitConflictError`. An entry whose checks did not pass is refused.
    """
    if not entry.checks.passed:
        # The flow should never get here with a failed gate; refusing keeps the invariant local.
        raise QualityGateError(entry.name, entry.checks.failed, entry.checks.report_uri)
    key = entry_key(entry.name, entry.version)
    uri = storage.uri(key)
    try:
        created = storage.create_json_exclusive(key, entry.model_dump(mode="json"))
    except CommitConflictError:
        # Same version, different bytes: usually only created_at differs (a retried run).
        existing = _read_entry(storage, key)
        if existing.same_content(entry):
            return RegisterOutcome(created=False, already_registered=True, uri=uri, entry=existing)
        raise CommitConflictError(
            f"{entry.ref} is already registered at {uri} with different content "
            f"(request_hash {existing.request_hash[:12]} vs {entry.request_hash[:12]}, "
            f"{len(existing.files)} vs {len(entry.files)} files); registered versions are "
            "immutable — change the request to get a new version"
        ) from None
    if created:
        return RegisterOutcome(created=True, already_registered=False, uri=uri, entry=entry)
    return RegisterOutcome(created=False, already_registered=True, uri=uri, entry=entry)


# --- reading -----------------------------------------------------------------------------------


def _read_entry(storage: Storage, key: str) -> RegistryEntry:
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
    return [k for k in storage.list(_versions_prefix(name)) if k.endswith(".json")]


def _sort_key(e: RegistryEntry) -> tuple[datetime, str]:
    return (e.created_at, e.version)


def list_versions(storage: Storage, name: str) -> list[RegistryEntry]:
    """Every registered version of ``name``, oldest first (by created_at, then version)."""
    entries = []
    for key in _version_keys(storage, name):
        try:
            entries.append(_read_entry(storage, key))
        except FileNotFoundError:
            continue  # removed between list and read; not ours to publish
    return sorted(entries, key=_sort_key)


def _dataset_names(storage: Storage) -> list[str]:
    prefix = REGISTRY_PREFIX + "/"
    return sorted(
        k.removeprefix(prefix)
        for k in storage.list(REGISTRY_PREFIX)
        if DATASET_NAME.match(k.removeprefix(prefix))
    )


def list_datasets(storage: Storage) -> list[DatasetSummary]:
    """One summary per registered dataset, by name; datasets without versions are left out."""
    out = []
    for name in _dataset_names(storage):
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
    """The entry of ``name@version``; ``latest`` is the newest by created_at (ties: version)."""
    if not DATASET_NAME.match(name):
        raise DatasetRefError(
            f"{name!r} is not a dataset name (lowercase letters, digits, '.', '_', '-')"
        )
    if version != LATEST:
        if not VERSION_RE.match(version) or version.startswith("."):
            raise DatasetRefError(f"{version!r} is not a version of dataset {name!r}")
        try:
            return _read_entry(storage, entry_key(name, version))
        except FileNotFoundError:
            pass
    versions = list_versions(storage, name)
    if not versions:
        known = [s for s in _dataset_names(storage) if s != name]
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


def parse_ref(ref: str) -> tuple[str, str]:
    """``"name@version"`` → ``(name, version)``; a bare ``"name"`` means ``(name, "latest")``."""
    text = ref.strip()
    name, sep, version = text.partition("@")
    if not name:
        raise DatasetRefError(f"{ref!r} has no dataset name before '@' (expected name@version)")
    if not DATASET_NAME.match(name):
        raise DatasetRefError(
            f"{name!r} in {ref!r} is not a dataset name: use lowercase letters, digits, '.', '_' "
            "and '-', starting with a letter or digit"
        )
    if not sep:
        return name, LATEST
    if not version:
        raise DatasetRefError(f"{ref!r} has nothing after '@'; give a version or 'latest'")
    if "@" in version or not VERSION_RE.match(version) or version.startswith("."):
        raise DatasetRefError(
            f"{version!r} in {ref!r} is not a version: use letters, digits, '.', '_' and '-'"
        )
    return name, version
