"""Every storage key under an output root, in one place. No other module formats a key.

::

    <root>/
      README.md                                  dataset card (Hugging Face format)
      .preflight/<token>                         preflight's write probe (removed at once)
      registry/<name>/versions/<version>.json    one registry entry per registered version
      registry/<name>/sequence/<n>.json          claim of order number n (12 digits) by a version
      runs/<hash16>/                             one folder per request (first 16 hex of its hash)
        shards/<shard>.parquet                   output rows of a shard
        quarantine/<shard>.parquet               quarantine rows of a shard (when any)
        commits/<shard>.json                     commit marker, written last
        commits/<shard>.g<N>.json                marker of a shard recomputed after damage (N >= 1)
        shards/g<N>-<sha12>/<shard>.parquet      its files (content-addressed: racing writers of
        quarantine/g<N>-<sha12>/<shard>.parquet  different bytes never share a key)
        images/<shard>/<row_id>.png              optional image files (write_image_files)
        preview-<version>.png                    preview grid of a version
        v-<version>/quality/report.{md,json}     the quality gate's report of a version
        v-<version>/quality/data-docs/index.html Great Expectations Data Docs of that validation

Keys are relative to the root (``/``-separated, no leading slash); :class:`~augflow.tasks.storage.
Storage` turns them into URIs. Names and versions are validated before they become keys.
"""

from __future__ import annotations

import re

from augflow.schemas.names import check_dataset_name, check_version

REGISTRY = "registry"
RUNS = "runs"
DATASET_CARD = "README.md"
#: Folder of a version's Great Expectations Data Docs site, beside its quality report.
DATA_DOCS = "data-docs"
PREFLIGHT = ".preflight"

_MARKER_NAME = re.compile(r"^(?P<sid>[^/]+?)(?:\.g(?P<gen>[1-9][0-9]*))?\.json$")


class RunLayout:
    """Where one request's objects live (keys, never full URIs)."""

    def __init__(self, request_hash: str) -> None:
        if len(request_hash) < 16 or not request_hash.isalnum():
            raise ValueError(f"{request_hash!r} is not a request hash")
        self.run = f"{RUNS}/{request_hash[:16]}"

    def data_file(self, shard_id: str, tag: str | None = None) -> str:
        """The data file of a shard; ``tag`` names a recomputed generation's folder."""
        return f"{self.shards}/{tag + '/' if tag else ''}{shard_id}.parquet"

    def quarantine_file(self, shard_id: str, tag: str | None = None) -> str:
        return f"{self.quarantine}/{tag + '/' if tag else ''}{shard_id}.parquet"

    def commit_marker(self, shard_id: str, generation: int = 0) -> str:
        """Generation 0 is the first commit; N >= 1 the N-th recomputation after damage."""
        suffix = f".g{generation}" if generation else ""
        return f"{self.commits}/{shard_id}{suffix}.json"

    @property
    def commits(self) -> str:
        return f"{self.run}/commits"

    @property
    def shards(self) -> str:
        return f"{self.run}/shards"

    @property
    def quarantine(self) -> str:
        return f"{self.run}/quarantine"

    def image_file(self, shard_id: str, row_id: str) -> str:
        return f"{self.run}/images/{shard_id}/{row_id}.png"

    def preview(self, version: str) -> str:
        return f"{self.run}/preview-{check_version(version)}.png"

    def quality_dir(self, version: str) -> str:
        return f"{self.run}/v-{check_version(version)}/quality"

    def quality_report(self, version: str) -> str:
        return f"{self.quality_dir(version)}/report.md"

    def quality_json(self, version: str) -> str:
        return f"{self.quality_dir(version)}/report.json"

    def data_docs_dir(self, version: str) -> str:
        return f"{self.quality_dir(version)}/{DATA_DOCS}"

    def data_docs_index(self, version: str) -> str:
        return f"{self.data_docs_dir(version)}/index.html"


def data_docs_beside(report: str) -> str:
    """The Data Docs index beside a quality report, given the report's key or URI (both live in
    the version's quality folder; for callers that hold a report but not its version)."""
    return f"{report.rsplit('/', 1)[0]}/{DATA_DOCS}/index.html"


def generation_tag(generation: int, sha256: str) -> str:
    """The folder of a recomputed generation's files: content-addressed, so two writers racing
    to recompute a shard with different bytes never write the same key."""
    return f"g{generation}-{sha256[:12]}"


def parse_commit_marker(key: str) -> tuple[str, int] | None:
    """``(shard_id, generation)`` of a commit marker key (None for anything else)."""
    m = _MARKER_NAME.match(key.rsplit("/", 1)[-1])
    return (m["sid"], int(m["gen"] or 0)) if m else None


def preflight_probe(token: str) -> str:
    return f"{PREFLIGHT}/{token}"


def shard_id_of(data_file: str) -> str:
    """The shard id of a data file key (its file name without ``.parquet``)."""
    return data_file.rsplit("/", 1)[-1].removesuffix(".parquet")


def registry_dataset(name: str) -> str:
    return f"{REGISTRY}/{check_dataset_name(name)}"


def registry_versions(name: str) -> str:
    return f"{registry_dataset(name)}/versions"


def registry_entry(name: str, version: str) -> str:
    return f"{registry_versions(name)}/{check_version(version)}.json"


def registry_sequences(name: str) -> str:
    return f"{registry_dataset(name)}/sequence"


def registry_sequence(name: str, number: int) -> str:
    """The claim of order number ``number`` (zero-padded, so listings sort numerically)."""
    if number < 1:
        raise ValueError(f"sequence numbers start at 1, not {number}")
    return f"{registry_sequences(name)}/{number:012d}.json"


def sequence_of(key: str) -> int | None:
    """The number of a sequence claim key (None for anything else, e.g. a temp file)."""
    name = key.rsplit("/", 1)[-1]
    stem = name.removesuffix(".json")
    return int(stem) if name.endswith(".json") and len(stem) == 12 and stem.isdigit() else None


def dataset_name_of(key: str) -> str:
    """The dataset name of a key directly below ``registry/`` (as :meth:`Storage.list` gives it)."""
    return key.removeprefix(f"{REGISTRY}/").split("/", 1)[0]
