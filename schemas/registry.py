"""The registry entry: one registered, immutable dataset version.

Entries store keys relative to the output root, never absolute URIs, so a copied or moved output
root stays readable; readers resolve keys against the root they opened. Format 1 entries (absolute
``uri`` fields and a ``checks`` block) are read and converted.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from augflow.schemas.names import check_dataset_name, check_version
from augflow.schemas.quality import QualitySummary

ENTRY_FORMAT = 2


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class FileRef(_Frozen):
    """One Parquet file of a version: its key under the output root, rows and size."""

    key: str
    rows: int = Field(ge=0)
    bytes: int = Field(ge=0)


class ModelInfo(_Frozen):
    id: str
    revision: str | None = None
    scheduler: str | None = None


class RegistryEntry(_Frozen):
    """One registered, immutable dataset version."""

    format_version: int = ENTRY_FORMAT
    name: str
    version: str
    created_at: datetime
    # The registry's total order (tasks/register.py): claimed with an exclusive create before
    # the entry is published, so it follows publication order whatever the clocks say. Entries
    # registered before it existed have none and sort before every numbered one.
    sequence: int | None = Field(default=None, ge=1)
    files: list[FileRef]
    quarantine_files: list[FileRef] = Field(default_factory=list)
    num_rows: int = Field(ge=0)
    num_quarantined: int = Field(ge=0)
    request: dict[str, Any]
    request_hash: str
    code_version: str
    model: ModelInfo
    quality: QualitySummary

    @model_validator(mode="before")
    @classmethod
    def _upgrade(cls, data: Any) -> Any:
        if not isinstance(data, dict) or data.get("format_version", 1) != 1:
            return data
        # format 1: absolute URIs beside the keys, and the gate's verdict under `checks`
        data = {k: v for k, v in data.items() if k != "uri"}
        for group in ("files", "quarantine_files"):
            data[group] = [
                {k: v for k, v in f.items() if k != "uri"} if isinstance(f, dict) else f
                for f in data.get(group) or []
            ]
        checks = data.pop("checks", None)
        if isinstance(checks, dict):
            report = str(checks.get("report_uri", ""))
            key = report.split("/runs/", 1)[1] if "/runs/" in report else report
            data["quality"] = {
                "passed": checks.get("passed"),
                "failed": checks.get("failed", []),
                "report_key": f"runs/{key}" if "/runs/" in report else key,
            }
        data["format_version"] = ENTRY_FORMAT
        return data

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        return check_dataset_name(v)

    @field_validator("version")
    @classmethod
    def _version(cls, v: str) -> str:
        # The version becomes part of a storage key, so it must not be able to climb out of it.
        return check_version(v)

    @field_validator("created_at")
    @classmethod
    def _utc(cls, v: datetime) -> datetime:
        if v.tzinfo is None:
            raise ValueError("created_at must carry a timezone (UTC)")
        return v.astimezone(UTC)

    @property
    def order_key(self) -> tuple[int, int, datetime, str]:
        """Oldest first: unnumbered (older) entries by time then version, then by sequence."""
        if self.sequence is None:
            return (0, 0, self.created_at, self.version)
        return (1, self.sequence, self.created_at, self.version)

    @property
    def ref(self) -> str:
        return f"{self.name}@{self.version}"

    @property
    def file_keys(self) -> list[str]:
        return [f.key for f in self.files]

    def same_content(self, other: RegistryEntry) -> bool:
        """Whether two entries describe the same version (timestamps and sequence aside)."""
        return (
            self.name == other.name
            and self.version == other.version
            and self.request_hash == other.request_hash
            and self.files == other.files
        )


class DatasetSummary(_Frozen):
    name: str
    num_versions: int
    latest_version: str
    latest_num_rows: int
    created_at: datetime
