"""What the quality gate found: per-check results, the report written next to the data, and the
summary a registry entry carries."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

REPORT_FORMAT = 1


class QualityCheck(BaseModel):
    """One check of the gate, GX-backed or not."""

    model_config = ConfigDict(frozen=True)

    name: str
    passed: bool
    observed: Any = Field(
        description="the measured value: a count of failing rows, a row count, a fraction"
    )
    threshold: Any = Field(
        default=None, description="what was required: a number, or the requirement in words"
    )
    detail: str = Field(description="one line saying what was required and what was found")
    failed_rows: int = 0
    examples: list[str] = Field(default_factory=list, description="a few failing row ids")


class QualitySummary(BaseModel):
    """The gate's verdict as a registry entry records it: pass/fail, the failed checks as one line
    each, and where the full report is."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    passed: bool
    failed: list[str] = Field(default_factory=list)
    report_key: str = Field(description="the Markdown report, relative to the output root")
    metrics: dict[str, Any] = Field(
        default_factory=dict,
        description="every quality metric measured: effect metric ranges (min/median/max), "
        "near-duplicate and memorised shares, diversity, KID/FID and the feature extractor",
    )


class QualityReport(BaseModel):
    """What the gate found for one run; ``failed`` holds one human line per failed check."""

    model_config = ConfigDict(frozen=True)

    format_version: int = REPORT_FORMAT
    passed: bool
    checks: list[QualityCheck]
    failed: list[str]
    report_key: str
    report_uri: str
    json_uri: str
    statistics: dict[str, Any]
    metrics: dict[str, Any] = Field(default_factory=dict)

    def summary(self) -> QualitySummary:
        return QualitySummary(
            passed=self.passed, failed=self.failed, report_key=self.report_key, metrics=self.metrics
        )
