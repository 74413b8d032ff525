"""The quality report and the summary a registry entry carries."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from augflow.schemas.quality import REPORT_FORMAT, QualityCheck, QualityReport, QualitySummary


def _report(passed: bool = False) -> QualityReport:
    checks = [
        QualityCheck(name="row_count", passed=True, observed=10, detail="expected 10, found 10"),
        QualityCheck(
            name="no_nan",
            passed=passed,
            observed=0.2,
            detail="NaN rows: expected 0, found 2",
            failed_rows=2,
            examples=["r1", "r7"],
        ),
    ]
    return QualityReport(
        passed=passed,
        checks=checks,
        failed=[] if passed else ["no_nan: NaN rows: expected 0, found 2"],
        report_key="runs/0123456789abcdef/v-abc/quality/report.md",
        report_uri="file:///out/runs/0123456789abcdef/v-abc/quality/report.md",
        json_uri="file:///out/runs/0123456789abcdef/v-abc/quality/report.json",
        statistics={"rows": 10, "pixel_mean": {"mean": 0.5}},
    )


def test_summary_carries_the_verdict_and_the_report_key() -> None:
    report = _report(passed=False)
    summary = report.summary()
    assert summary == QualitySummary(
        passed=False,
        failed=["no_nan: NaN rows: expected 0, found 2"],
        report_key="runs/0123456789abcdef/v-abc/quality/report.md",
    )
    assert _report(passed=True).summary().failed == []


def test_report_round_trips_through_json_with_its_format_version() -> None:
    report = _report()
    data = json.loads(report.model_dump_json())
    assert data["format_version"] == REPORT_FORMAT == 1
    assert data["checks"][1]["examples"] == ["r1", "r7"]
    assert QualityReport.model_validate(data) == report


def test_check_defaults() -> None:
    check = QualityCheck(name="x", passed=True, observed=None, detail="d")
    assert (check.failed_rows, check.examples) == (0, [])


def test_summary_refuses_unknown_keys() -> None:
    # The summary is stored in registry entries; a typo must not be silently dropped.
    with pytest.raises(ValidationError, match="report_uri"):
        QualitySummary.model_validate({"passed": True, "report_key": "k", "report_uri": "u"})
