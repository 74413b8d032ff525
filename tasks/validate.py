"""The quality gate: a Great Expectations suite over the per-row metrics of a run, plus counts.

Only ``METRIC_COLUMNS`` are read from the committed shard files, never the image bytes. The report
(GX's own result plus our summary as JSON, and a human-readable Markdown page) is written next to
the data (``RunLayout.quality_dir``) whether the gate passes or not, so a failed run can be read.

Plain functions: the flow wraps :func:`validate_rows` in a Prefect task. Nothing here imports
Prefect, and GX is imported lazily because its import alone takes seconds.
"""

from __future__ import annotations

import math
import os
import uuid
from typing import Any

import pandas as pd
import pyarrow as pa
from pydantic import BaseModel

from augflow.schemas.errors import InputError, ModelLoadError, StorageError
from augflow.schemas.quality import QualityCheck, QualityReport
from augflow.schemas.request import AugmentRequest
from augflow.schemas.rows import METRIC_COLUMNS, ROW_SCHEMA
from augflow.tasks.gx_docs import quiet_gx_logs
from augflow.tasks.layout import RunLayout
from augflow.tasks.quality_sets import as_quality_check, effect_level, set_level
from augflow.tasks.storage import Storage

#: How many example row ids a failed check names (in the report and in its one-line summary).
MAX_EXAMPLES = 5


# --- the checks ------------------------------------------------------------------------------
# Each GX expectation is tagged with our check name in its ``meta`` so results map back to the
# check without relying on the order GX returns them in.


class _Spec(BaseModel):
    name: str
    requirement: str  # "every row is decodable", used in the report
    failure: str  # "{n} of {total} rows ..." completed with the counts


def _row_failure(name: str, requirement: str, failure: str) -> _Spec:
    return _Spec(name=name, requirement=requirement, failure=failure)


def _build_suite(
    gx: Any, request: AugmentRequest, expected_rows: int
) -> tuple[Any, dict[str, _Spec]]:
    e = gx.expectations
    q = request.quality
    specs: dict[str, _Spec] = {}
    expectations: list[tuple[_Spec, Any]] = []

    def add(spec: _Spec, expectation: Any) -> None:
        specs[spec.name] = spec
        expectations.append((spec, expectation))

    add(
        _row_failure("row_count", f"exactly {expected_rows} rows (the manifest count)", ""),
        e.ExpectTableRowCountToEqual(value=expected_rows),
    )
    add(
        _row_failure("row_id_not_null", "every row has a row_id", "rows have no row_id"),
        e.ExpectColumnValuesToNotBeNull(column="row_id"),
    )
    add(
        _row_failure("row_id_unique", "row_id is unique", "rows share a row_id with another row"),
        e.ExpectColumnValuesToBeUnique(column="row_id"),
    )
    add(
        _row_failure("decodable", "every image decodes", "rows do not decode as an image"),
        e.ExpectColumnValuesToBeInSet(column="decodable", value_set=[True]),
    )
    add(
        _row_failure("has_nan", "no image contains NaN", "rows contain NaN"),
        e.ExpectColumnValuesToBeInSet(column="has_nan", value_set=[False]),
    )
    add(
        _row_failure("is_blank", "no image is blank", "rows are blank images"),
        e.ExpectColumnValuesToBeInSet(column="is_blank", value_set=[False]),
    )
    add(
        _row_failure("width", "width == expected_width", "rows have the wrong width"),
        e.ExpectColumnPairValuesToBeEqual(column_A="width", column_B="expected_width"),
    )
    add(
        _row_failure("height", "height == expected_height", "rows have the wrong height"),
        e.ExpectColumnPairValuesToBeEqual(column_A="height", column_B="expected_height"),
    )
    add(
        _row_failure(
            "pixel_std",
            f"pixel_std >= {q.min_pixel_std}",
            f"rows have pixel_std below {q.min_pixel_std} (flat images)",
        ),
        e.ExpectColumnValuesToBeBetween(column="pixel_std", min_value=q.min_pixel_std),
    )
    if q.min_faithfulness_psnr is not None and request.operation.faithfulness != "none":
        # Between-expectations skip nulls, so a missing PSNR is its own check: an unmeasured row
        # must not pass a threshold the request asked for.
        add(
            _row_failure(
                "faithfulness_psnr_present",
                "every row has a faithfulness_psnr",
                "rows have no faithfulness_psnr",
            ),
            e.ExpectColumnValuesToNotBeNull(column="faithfulness_psnr"),
        )
        add(
            _row_failure(
                "faithfulness_psnr",
                f"faithfulness_psnr >= {q.min_faithfulness_psnr} dB",
                f"rows are less faithful to their source than {q.min_faithfulness_psnr} dB PSNR",
            ),
            e.ExpectColumnValuesToBeBetween(
                column="faithfulness_psnr", min_value=q.min_faithfulness_psnr
            ),
        )

    suite = gx.ExpectationSuite(name=f"augflow-{request.dataset}")
    for spec, expectation in expectations:
        expectation.meta = {"augflow_check": spec.name}
        suite.add_expectation(expectation)
    return suite, specs


# --- GX plumbing ---------------------------------------------------------------------------


def _import_gx() -> Any:
    # Offline by design (no usage analytics calls home); must be set before GX is first imported.
    os.environ["GX_ANALYTICS_ENABLED"] = "false"
    import great_expectations as gx

    return gx


def _run_gx(
    request: AugmentRequest, df: pd.DataFrame, expected_rows: int
) -> tuple[dict[str, Any], dict[str, _Spec]]:
    gx = _import_gx()
    from great_expectations.data_context.types.base import ProgressBarsConfig

    with quiet_gx_logs():
        context = gx.get_context(mode="ephemeral")
        context.variables.progress_bars = ProgressBarsConfig(
            globally=False, metric_calculations=False
        )
        name = f"augflow-{uuid.uuid4().hex[:8]}"
        asset = context.data_sources.add_pandas(name).add_dataframe_asset("metrics")
        batch_def = asset.add_batch_definition_whole_dataframe("all_rows")
        suite, specs = _build_suite(gx, request, expected_rows)
        suite = context.suites.add(suite)
        batch = batch_def.get_batch(batch_parameters={"dataframe": df})
        # SUMMARY keeps the report bounded for millions of rows: counts plus a few example rows,
        # identified by row_id rather than by a DataFrame index nobody can look up.
        result = batch.validate(
            suite,
            result_format={
                "result_format": "SUMMARY",
                "unexpected_index_column_names": ["row_id"],
                "partial_unexpected_count": MAX_EXAMPLES,
            },
        )
    return _json_safe(result.to_json_dict()), specs


def _json_safe(obj: Any) -> Any:
    # GX results may carry NaN/inf (from the metric values themselves); strict JSON has neither.
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else str(obj)
    if isinstance(obj, dict):
        return {str(k): _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    return obj


def _examples(result: dict[str, Any]) -> list[str]:
    out: list[str] = []
    for item in result.get("partial_unexpected_index_list") or []:
        if isinstance(item, dict) and item.get("row_id") is not None:
            rid = str(item["row_id"])
            if rid not in out:
                out.append(rid)
    return out[:MAX_EXAMPLES]


def _check_from_gx(evr: dict[str, Any], spec: _Spec, total: int) -> QualityCheck:
    res = evr.get("result") or {}
    passed = bool(evr.get("success"))
    exc = evr.get("exception_info") or {}
    if exc.get("raised_exception"):
        msg = str(exc.get("exception_message") or "unknown error").splitlines()[0]
        return QualityCheck(
            name=spec.name, passed=False, observed=None, detail=f"the check could not run: {msg}"
        )
    if spec.name == "row_count":
        observed = res.get("observed_value")
        detail = f"required {spec.requirement}; found {observed}"
        return QualityCheck(name=spec.name, passed=passed, observed=observed, detail=detail)
    n = int(res.get("unexpected_count") or 0)
    examples = _examples(res)
    if passed:
        detail = f"{spec.requirement}: all {total} rows pass"
    else:
        detail = f"{n} of {total} {spec.failure}"
    return QualityCheck(
        name=spec.name, passed=passed, observed=n, detail=detail, failed_rows=n, examples=examples
    )


def _one_line(check: QualityCheck) -> str:
    line = f"{check.name}: {check.detail}"
    if check.examples:
        shown = ", ".join(_short(r) for r in check.examples[:3])
        line += f" (e.g. row {shown})"
    return line


def _short(row_id: str) -> str:
    return row_id if len(row_id) <= 12 else row_id[:12] + "…"


# --- data loading --------------------------------------------------------------------------


def _load_metrics(storage: Storage, data_files: list[str]) -> pd.DataFrame:
    if data_files:
        table = storage.read_parquet(data_files, columns=METRIC_COLUMNS)
    else:
        # Zero files is a valid input: the row-count expectation is what must fail, not a read.
        schema = pa.schema([ROW_SCHEMA.field(c) for c in METRIC_COLUMNS])
        table = schema.empty_table()
    return table.to_pandas()


# --- the entry point -----------------------------------------------------------------------


def validate_rows(
    storage: Storage,
    request: AugmentRequest,
    version: str,
    data_files: list[str],
    expected_rows: int,
    num_quarantined: int,
    planned_items: int,
) -> QualityReport:
    """Run the quality gate over a run's committed shards and write its report.

    ``data_files`` are storage keys of committed shard Parquet files; ``expected_rows`` is the
    manifest count of output rows; ``planned_items`` the number of planned output rows that the
    quarantine fraction is measured against. Returns the report whether or not it passed.
    """
    df = _load_metrics(storage, data_files)
    total = len(df)
    gx_result, specs = _run_gx(request, df, expected_rows)

    checks: list[QualityCheck] = []
    for evr in gx_result.get("results", []):
        name = ((evr.get("expectation_config") or {}).get("meta") or {}).get("augflow_check")
        if name in specs:
            checks.append(_check_from_gx(evr, specs[name], total))
    for name in specs.keys() - {c.name for c in checks}:
        # Defensive: an expectation GX silently dropped must not count as passed.
        checks.append(
            QualityCheck(name=name, passed=False, observed=None, detail="GX returned no result")
        )
    # GX returns results in its own order; the report reads better in the suite's order.
    order = list(specs)
    checks.sort(key=lambda c: order.index(c.name))

    # Not a GX check: it is about rows that are *not* in the table.
    limit = request.quality.max_quarantine_fraction
    fraction = num_quarantined / planned_items if planned_items > 0 else 0.0
    q_passed = fraction <= limit
    checks.append(
        QualityCheck(
            name="quarantine_fraction",
            passed=q_passed,
            observed=round(fraction, 6),
            detail=(
                f"{num_quarantined} of {planned_items} planned items quarantined "
                f"({fraction:.1%}; allowed at most {limit:.1%})"
            ),
            failed_rows=num_quarantined,
        )
    )

    metrics = _effect_and_set_checks(storage, request, data_files, checks)

    # Proxy usefulness (issue 13, tasks/proxy.py): off unless quality.min_proxy_lift is set.
    if request.quality.min_proxy_lift is not None:
        from augflow.tasks.proxy import proxy_check  # imports torch: only when asked for

        checks.append(proxy_check(storage, request, data_files))

    passed = all(c.passed for c in checks) and bool(gx_result.get("success"))
    failed = [_one_line(c) for c in checks if not c.passed]
    stats = {
        "rows": total,
        "expected_rows": expected_rows,
        "num_quarantined": num_quarantined,
        "planned_items": planned_items,
        "quarantine_fraction": round(fraction, 6),
        "data_files": len(data_files),
        "checks": len(checks),
        "checks_passed": sum(c.passed for c in checks),
        "gx_statistics": gx_result.get("statistics", {}),
        "gx_version": (gx_result.get("meta") or {}).get("great_expectations_version"),
    }

    layout = RunLayout(request.request_hash)
    md_key, json_key = layout.quality_report(version), layout.quality_json(version)
    report = QualityReport(
        passed=passed,
        checks=checks,
        failed=failed,
        report_key=md_key,
        report_uri=storage.uri(md_key),
        json_uri=storage.uri(json_key),
        statistics=stats,
        metrics=metrics,
    )
    storage.write_json(
        json_key,
        {
            "dataset": request.dataset,
            "request_hash": request.request_hash,
            "summary": report.model_dump(mode="json"),
            "great_expectations": gx_result,
        },
    )
    storage.write_bytes(md_key, _markdown(request, report).encode())

    # --- GX Data Docs (issue 15; tasks/gx_docs.py): a Checkpoint renders them beside the report
    from augflow.tasks.gx_docs import publish_data_docs

    publish_data_docs(storage, request, version, df, gx_result)
    # ---
    return report


def _effect_and_set_checks(
    storage: Storage, request: AugmentRequest, data_files: list[str], checks: list[QualityCheck]
) -> dict[str, Any]:
    """Issue 11's checks (tasks/quality_sets.py), streamed shard by shard, appended to ``checks``;
    returns every metric they measured."""
    files = [f for f in data_files if f]
    metrics: dict[str, Any] = {}
    if request.quality.effect_checks is not False:
        effect, metrics = effect_level(storage, request, files)
        checks.extend(effect)
    if request.quality.set_checks is False or not files:
        return metrics
    try:
        results, set_metrics = set_level(storage, request, files)
    except (InputError, StorageError, ModelLoadError) as exc:
        # a reference that cannot be read is the request's problem: the gate says so and fails
        checks.append(
            QualityCheck(
                name="set_checks",
                passed=False,
                observed=None,
                detail=f"the set-level checks could not run: {exc}",
            )
        )
        return metrics
    checks.extend(as_quality_check(r) for r in results)
    return {**metrics, **set_metrics}


def _markdown(request: AugmentRequest, report: QualityReport) -> str:
    s = report.statistics
    verdict = "PASSED ✓" if report.passed else "FAILED ✗"
    lines = [
        f"# Quality report — `{request.dataset}`: {verdict}",
        "",
        f"- request hash: `{request.request_hash}`",
        f"- operation: `{request.operation.kind}`",
        f"- rows: {s['rows']} (expected {s['expected_rows']}), "
        f"quarantined: {s['num_quarantined']} of {s['planned_items']} planned",
        f"- full Great Expectations result: {report.json_uri}",
        "",
        "| | check | observed | threshold | detail | example row_ids |",
        "|---|---|---|---|---|---|",
    ]
    for c in report.checks:
        mark = "✓" if c.passed else "✗"
        examples = ", ".join(f"`{r}`" for r in c.examples) or ""
        detail = c.detail.replace("|", "\\|")
        threshold = "" if c.threshold is None else str(c.threshold).replace("|", "\\|")
        lines.append(f"| {mark} | {c.name} | {c.observed} | {threshold} | {detail} | {examples} |")
    if report.metrics:
        lines += ["", "## Metrics", "", "| metric | value |", "|---|---|"]
        lines += [f"| {k} | {v} |" for k, v in sorted(report.metrics.items())]
    if report.failed:
        lines += ["", "## Failed", "", *[f"- {f}" for f in report.failed]]
    return "\n".join(lines) + "\n"
