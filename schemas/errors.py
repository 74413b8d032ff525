"""Every error augflow raises on purpose, in one place.

Messages say what was wrong *and what to do about it*, naming the field, file or URI.

    AugflowError
     ├── RequestError            a request field is invalid (raised before any model loads)
     ├── InputError              an input source cannot be listed or read as a whole
     ├── ImageRejected           one input is not a usable image; caught where it is raised and
     │                           turned into a quarantine row with its reason, never shown as an error
     ├── ModelLoadError          a model cannot be loaded safely (missing, pickle-only, remote code)
     ├── StorageError            the object store refused or failed an operation
     │    ├── CommitConflictError   an exclusive create found different content already there
     │    └── StoragePermissionError the store refused for good (access denied, no bucket, read-only)
     ├── RegistryError           the dataset registry cannot answer
     │    ├── VersionNotFoundError  ``name@version`` is not registered
     │    └── DatasetRefError       a dataset name, version or ``name@version`` is malformed
     ├── ExecutionError          shards failed on the workers after their retries
     ├── QualityGateError        the quality checks failed; nothing was registered
     ├── ExportError             a version cannot be exported where asked
     └── OrchestrationError      the local Prefect server augflow starts did not come up

A single bad image is never an error: it becomes a quarantine row with a reason.
"""

from __future__ import annotations


class AugflowError(Exception):
    """Base class of every error augflow raises on purpose."""


class RequestError(AugflowError, ValueError):
    """A request is invalid; ``field`` names the offending field (dotted path)."""

    def __init__(self, field: str, message: str) -> None:
        self.field = field
        self.message = message
        super().__init__(f"request field `{field}`: {message}")

    def __reduce__(self):
        return (type(self), (self.field, self.message))


class InputError(AugflowError):
    """An input source (folder, prefix, Parquet dataset, registered version) cannot be used."""


class ImageRejected(AugflowError):
    """One input could not be used as an image; ``reason`` is a short human sentence.

    The shard worker turns it into a quarantine row, so it never ends a run.
    """

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)


class ModelLoadError(AugflowError):
    """A model cannot be loaded, or cannot be loaded safely."""


class StorageError(AugflowError):
    """The object store refused or failed an operation."""


class CommitConflictError(StorageError):
    """An exclusive create found a different object already at that key."""


class StoragePermissionError(StorageError):
    """The store refused an operation for good: access denied, no such bucket, a read-only
    filesystem. Retrying cannot help, so shards failing with it are not retried."""


class RegistryError(AugflowError):
    """The dataset registry cannot answer."""


class VersionNotFoundError(RegistryError):
    """``name@version`` is not registered."""


class DatasetRefError(RegistryError, ValueError):
    """A dataset name, version or ``name@version`` reference is malformed."""


class ExecutionError(AugflowError):
    """One or more shards failed on the workers after their retries."""


class QualityGateError(AugflowError):
    """The quality checks failed, so nothing was registered.

    ``failed`` lists the failed checks as short human-readable lines; ``report_uri`` is where the
    full report was written.
    """

    def __init__(self, dataset: str, failed: list[str], report_uri: str) -> None:
        self.dataset = dataset
        self.failed = list(failed)
        self.report_uri = report_uri
        lines = "\n".join(f"  - {f}" for f in self.failed)
        super().__init__(
            f"quality checks failed for dataset `{dataset}`; nothing was registered.\n"
            f"{lines}\nfull report: {report_uri}"
        )

    def __reduce__(self):
        return (type(self), (self.dataset, self.failed, self.report_uri))


class ExportError(AugflowError):
    """A registered version cannot be exported to the destination asked for."""


class OrchestrationError(AugflowError):
    """The local Prefect server ``augflow run`` starts (no ``PREFECT_API_URL``) did not come up."""
