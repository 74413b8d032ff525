"""The commit marker: written last, with an exclusive create, when a shard's files are complete.

Its presence is what makes a shard committed. It is deterministic (no timestamps, no host names)
so a retried commit whose first response was lost finds identical bytes and is recognised as done
rather than as a conflict. Keys are relative to the output root.
"""

from __future__ import annotations

from typing import Final, Literal

from pydantic import BaseModel, ConfigDict, Field

MARKER_FORMAT: Final = 1


class CommitMarker(BaseModel):
    """One committed shard: where its files are and what they hold."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    format_version: Literal[1] = MARKER_FORMAT
    shard_id: str
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
    model_revision: str = ""
    scheduler: str = ""
    row_ids_sha256: str = Field(description="sha256 of the concatenated row ids, in row order")

    def to_json(self) -> dict:
        return self.model_dump(mode="json")
