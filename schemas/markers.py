"""The commit marker: written last, with an exclusive create, when a shard's files are complete.

Its presence is what makes a shard committed. It is deterministic (no timestamps, no host names)
so a retried commit whose first response was lost finds identical bytes and is recognised as done
rather than as a conflict. Keys are relative to the output root.

Format 2 records what the shard's files must hold: size, sha256 and, on S3, the ETag an MD5-ETag
store reports for them (``data_etag``), so a committed file is checked against its marker before
it is reused or validated (:mod:`augflow.tasks.commits`). Format 1 markers (sizes of the data file
only) are still read; their files are checked by size.

``generation`` orders the markers of one shard: a damaged shard is recomputed and committed again
under the next generation's key (markers are never overwritten or deleted), and the newest
generation is the shard's state.
"""

from __future__ import annotations

from typing import Final, Literal

from pydantic import BaseModel, ConfigDict, Field

MARKER_FORMAT: Final = 2


class FileCheck(BaseModel):
    """What one committed file must be: its key, size, and (format 2) digests."""

    model_config = ConfigDict(frozen=True)

    key: str
    bytes: int | None
    sha256: str | None = None
    etag: str | None = None


class CommitMarker(BaseModel):
    """One committed shard: where its files are and what they hold."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    format_version: Literal[1, 2] = MARKER_FORMAT
    shard_id: str
    generation: int = Field(default=0, ge=0, description="0 first, +1 per recomputation")
    data_file: str | None = Field(
        default=None,
        description="key of the shard's Parquet file of output rows; None when every input of the "
        "shard was quarantined (no 0-row file is ever written)",
    )
    quarantine_file: str | None = Field(
        default=None, description="key of the shard's quarantine Parquet file, if any"
    )
    num_rows: int = Field(ge=0)
    num_quarantined: int = Field(ge=0)
    data_bytes: int = Field(ge=0, description="size of the data file in bytes")
    data_sha256: str | None = Field(default=None, description="sha256 of the data file (format 2)")
    data_etag: str | None = Field(
        default=None, description="ETag an MD5-ETag store reports for the data file (S3 roots)"
    )
    quarantine_bytes: int | None = Field(default=None, ge=0)
    quarantine_sha256: str | None = None
    quarantine_etag: str | None = None
    model_revision: str = ""
    scheduler: str = ""
    row_ids_sha256: str = Field(description="sha256 of the concatenated row ids, in row order")

    def to_json(self) -> dict:
        data = self.model_dump(mode="json")
        if self.format_version == 1:
            # A format-1 marker read back and written again keeps its exact format-1 bytes.
            for name in _FORMAT_2_FIELDS:
                data.pop(name, None)
        return data

    def files(self) -> list[FileCheck]:
        """The files this marker commits, with what each must be."""
        out = []
        if self.data_file:  # None: every input of the shard was quarantined
            out.append(
                FileCheck(
                    key=self.data_file,
                    bytes=self.data_bytes,
                    sha256=self.data_sha256,
                    etag=self.data_etag,
                )
            )
        if self.quarantine_file:
            out.append(
                FileCheck(
                    key=self.quarantine_file,
                    bytes=self.quarantine_bytes,
                    sha256=self.quarantine_sha256,
                    etag=self.quarantine_etag,
                )
            )
        return out

    def same_content(self, other: CommitMarker) -> bool:
        """Whether two markers commit the same bytes under the same keys. ETags are left out:
        they depend on the multipart part size of the writer, not on the content."""
        return (
            self.shard_id == other.shard_id
            and self.generation == other.generation
            and [(f.key, f.bytes, f.sha256) for f in self.files()]
            == [(f.key, f.bytes, f.sha256) for f in other.files()]
            and self.row_ids_sha256 == other.row_ids_sha256
        )


_FORMAT_2_FIELDS = (
    "generation",
    "data_sha256",
    "data_etag",
    "quarantine_bytes",
    "quarantine_sha256",
    "quarantine_etag",
)
