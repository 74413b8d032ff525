"""The quality gate: a Great Expectations suite over the per-row metrics of a run, plus counts.

Only ``METRIC_COLUMNS`` are read from the committed shard files, never the image bytes, and they
are read as a stream: the GX suite validates at most ``BATCH_ROWS`` rows at a time (whole shard
files, or slices of one bigger than that) and its per-batch results are summed into one GX
result, so the gate's memory does not grow with the version's row count. The checks that need
every row at once (``row_count``, ``row_id_not_null``, ``row_id_unique``) run outside GX on an
8-byte digest per row and are reported as GX results of their expectations, so readers see one
suite either way. The report (that result plus our summary as JSON, and a human-readable Markdown
page) is written next to the data (``RunLayout.quality_dir``) whether the gate passes or not, so a
failed run can be read.

Plain functions: the flow wraps :func:`validate_rows` in a Prefect task. Nothing here imports
Prefect, and GX is imported lazily because its import alone takes seconds.
"""

from __future__ import annotations

import bisect
import copy
import math
import os
import uuid
from collections import Counter
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
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
#: Most rows the GX suite validates at once. The form checks' memory is bounded by this plus one
#: shard file's metric columns, whatever the version's size: a batch's frame, GX's work on it and
#: allocator slack, about 2 KB a row of peak RSS. Each batch also costs GX ~0.1-0.2 s of fixed
#: work, so smaller batches are slower (docs/quality-gate.md, Memory, has the trade-off).
BATCH_ROWS = 10_000
#: The checks about the whole version, which no batch can decide alone: computed outside GX
#: (:class:`_RowIdTally`) and reported as results of their own GX expectations.
VERSION_CHECKS = ("row_count", "row_id_not_null", "row_id_unique")


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
) -> tuple[Any, dict[str, _Spec], dict[str, dict[str, Any]]]:
    """The suite GX runs on each batch, every check's spec (in report order), and the expectation
    configurations of the ``VERSION_CHECKS``, which are left out of the suite."""
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
    version_configs: dict[str, dict[str, Any]] = {}
    for spec, expectation in expectations:
        expectation.meta = {"augflow_check": spec.name}
        if spec.name in VERSION_CHECKS:
            # A batch cannot decide these; their results are made from whole-version tallies,
            # under the same expectation, so the report and Data Docs show one suite.
            version_configs[spec.name] = {"id": None, **expectation.configuration.to_json_dict()}
        else:
            suite.add_expectation(expectation)
    return suite, specs, version_configs


# --- GX plumbing ---------------------------------------------------------------------------


def _import_gx() -> Any:
    # Offline by design (no usage analytics calls home); must be set before GX is first imported.
    os.environ["GX_ANALYTICS_ENABLED"] = "false"
    import great_expectations as gx

    return gx


class _GxStream:
    """One ephemeral GX context whose Checkpoint validates batch after batch: building the
    context, suite and Checkpoint costs more than validating a small batch.

    The Checkpoint has no actions: its per-batch results are parts of one validation, summed by
    :class:`_GxSum`; the Data Docs come from the sum, through a Checkpoint whose
    ``UpdateDataDocsAction`` renders it (:mod:`augflow.tasks.gx_docs`).
    """

    def __init__(self, request: AugmentRequest, expected_rows: int) -> None:
        gx = _import_gx()
        from great_expectations.data_context.types.base import ProgressBarsConfig

        with quiet_gx_logs():
            self._context = gx.get_context(mode="ephemeral")
            self._context.variables.progress_bars = ProgressBarsConfig(
                globally=False, metric_calculations=False
            )
            name = f"augflow-{uuid.uuid4().hex[:8]}"
            asset = self._context.data_sources.add_pandas(name).add_dataframe_asset("metrics")
            batch_def = asset.add_batch_definition_whole_dataframe("all_rows")
            suite, self.specs, self.version_configs = _build_suite(gx, request, expected_rows)
            suite = self._context.suites.add(suite)
            validation = self._context.validation_definitions.add(
                gx.ValidationDefinition(name=name, data=batch_def, suite=suite)
            )
            self._checkpoint = self._context.checkpoints.add(
                gx.Checkpoint(
                    name=name,
                    validation_definitions=[validation],
                    actions=[],
                    # SUMMARY keeps the report bounded for millions of rows: counts plus a few
                    # example rows, identified by row_id rather than by a DataFrame index nobody
                    # can look up.
                    result_format={
                        "result_format": "SUMMARY",
                        "unexpected_index_column_names": ["row_id"],
                        "partial_unexpected_count": MAX_EXAMPLES,
                    },
                )
            )

    def validate(self, df: pd.DataFrame) -> dict[str, Any]:
        with quiet_gx_logs():
            outcome = self._checkpoint.run(batch_parameters={"dataframe": df})
        ((key, result),) = outcome.run_results.items()
        # The validation stores each batch's result in the context's store; the sum is the
        # record, so a batch's copy goes at once and memory stays flat over many batches.
        self._context.validation_results_store.remove_key(key)
        return _json_safe(result.to_json_dict())


def _run_gx(
    storage: Storage,
    request: AugmentRequest,
    files: Sequence[str],
    expected_rows: int,
    batch_rows: int,
) -> tuple[dict[str, Any], dict[str, _Spec], int]:
    """The GX result of the whole suite over every row of ``files``, the checks' specs, and the
    number of rows. Memory: one batch of at most ``batch_rows`` rows, plus 8 bytes a row."""
    stream = _GxStream(request, expected_rows)
    ids = _RowIdTally(expected_rows)
    summed = _GxSum()
    for table in _metric_batches(storage, files, batch_rows):
        ids.add(table.column("row_id"))
        summed.add(stream.validate(table.to_pandas()))
        del table  # the frame and table of this batch go before the next is read
        # Arrow's allocator keeps freed blocks for reuse; handing them back keeps the process at
        # one batch's high-water mark instead of adding the next phases on top of it.
        pa.default_memory_pool().release_unused()
    repeated = ids.repeated()
    duplicates = _duplicate_row_ids(storage, files, repeated) if len(repeated) else (0, [])
    whole = _version_results(stream.version_configs, ids, duplicates, expected_rows)
    return summed.result(list(stream.specs), whole), stream.specs, ids.rows


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


# --- streaming the metric columns ------------------------------------------------------------


def _metric_batches(storage: Storage, files: Sequence[str], batch_rows: int) -> Iterator[pa.Table]:
    """The metric columns of ``files`` in row order, in tables of at most ``batch_rows`` rows:
    small shard files are gathered, a big one is cut. At least one (maybe empty) table, so GX
    always runs: zero rows is a valid input, and the row-count check is what must fail."""
    if batch_rows < 1:
        raise ValueError(f"batch_rows must be >= 1, not {batch_rows}")
    held: list[pa.Table] = []
    n = 0
    yielded = False
    for key in files:
        table = storage.read_parquet([key], columns=METRIC_COLUMNS)
        if table.num_rows == 0:
            continue
        held.append(table)
        n += table.num_rows
        while n >= batch_rows:
            joined = pa.concat_tables(held)
            yield joined.slice(0, batch_rows)
            yielded = True
            rest = joined.slice(batch_rows)
            held, n = ([rest] if rest.num_rows else []), rest.num_rows
    if held or not yielded:
        yield pa.concat_tables(held) if held else _empty_metrics()


def _empty_metrics() -> pa.Table:
    return pa.schema([ROW_SCHEMA.field(c) for c in METRIC_COLUMNS]).empty_table()


# --- the whole-version checks: row count and row_id, outside GX ---------------------------------

#: Keys of two independent 64-bit digests of a row_id (pandas' SipHash takes 16 bytes): the first
#: finds candidate duplicates in 8 bytes a row, the second confirms them (a first-digest collision
#: is then not a duplicate).
_DIGEST_KEYS = ("augflow-row-id-1", "augflow-row-id-2")


def _digests(ids: np.ndarray, which: int) -> np.ndarray:
    out: np.ndarray = pd.util.hash_array(ids, hash_key=_DIGEST_KEYS[which], categorize=False)
    return out


class _RowIdTally:
    """Rows, null row_ids, and a 64-bit digest of every other row_id: 8 bytes a row, however
    the rows were batched (a uniqueness check needs every row; GX's holds the values)."""

    def __init__(self, expected_rows: int) -> None:
        self.rows = 0
        self.nulls = 0
        self._digests = np.empty(max(expected_rows, 1024), dtype=np.uint64)
        self._n = 0

    def add(self, ids: pa.ChunkedArray) -> None:
        self.rows += len(ids)
        self.nulls += ids.null_count
        present = ids.drop_null().to_numpy(zero_copy_only=False).astype(object)
        if self._n + len(present) > len(self._digests):
            # more rows than the manifest said: the row count fails, uniqueness still holds
            grown = np.empty(max(2 * len(self._digests), self._n + len(present)), np.uint64)
            grown[: self._n] = self._digests[: self._n]
            self._digests = grown
        self._digests[self._n : self._n + len(present)] = _digests(present, 0)
        self._n += len(present)

    def repeated(self) -> np.ndarray:
        """The first digests seen more than once (sorted, unique). Sorts in place: call once."""
        d = self._digests[: self._n]
        d.sort()
        return np.unique(d[1:][d[1:] == d[:-1]])


def _duplicate_row_ids(
    storage: Storage, files: Sequence[str], repeated: np.ndarray
) -> tuple[int, list[tuple[str, int]]]:
    """How many rows share their row_id with another row, and the first ``MAX_EXAMPLES`` such
    ids in row order with how many rows hold each.

    Runs only when first digests repeat. Re-reads the row_id column file by file, keeping the
    candidates' second digests and positions (24 bytes a candidate row), then reads the example
    ids from the few files that hold them."""
    d1_parts, d2_parts, pos_parts = [], [], []
    starts: list[int] = []
    start = 0
    for key in files:
        ids = storage.read_parquet([key], columns=["row_id"]).column("row_id")
        starts.append(start)
        values = ids.to_numpy(zero_copy_only=False)
        present = np.flatnonzero(pc.is_valid(ids).to_numpy(zero_copy_only=False))
        d1 = _digests(values[present].astype(object), 0)
        hit = np.isin(d1, repeated)
        if hit.any():
            rows = present[hit]
            d1_parts.append(d1[hit])
            d2_parts.append(_digests(values[rows].astype(object), 1))
            pos_parts.append(start + rows)
        start += len(ids)
    if not d1_parts:
        return 0, []
    d1, d2, pos = (np.concatenate(p) for p in (d1_parts, d2_parts, pos_parts))
    order = np.lexsort((pos, d2, d1))  # by id digests, then by row: a group's first row first
    d1, d2, pos = d1[order], d2[order], pos[order]
    new_group = np.ones(len(d1), dtype=bool)
    new_group[1:] = (d1[1:] != d1[:-1]) | (d2[1:] != d2[:-1])
    firsts = np.flatnonzero(new_group)
    sizes = np.diff(np.append(firsts, len(d1)))
    shared = sizes > 1
    count = int(sizes[shared].sum())
    if count == 0:
        return 0, []
    examples = sorted(zip(pos[firsts][shared].tolist(), sizes[shared].tolist(), strict=True))
    examples = examples[:MAX_EXAMPLES]
    read: dict[int, list[Any]] = {}
    out = []
    for row, size in examples:
        f = bisect.bisect_right(starts, row) - 1
        if f not in read:
            table = storage.read_parquet([files[f]], columns=["row_id"])
            read[f] = table.column("row_id").to_pylist()
        out.append((str(read[f][row - starts[f]]), size))
    return count, out


def _version_results(
    configs: dict[str, dict[str, Any]],
    ids: _RowIdTally,
    duplicates: tuple[int, list[tuple[str, int]]],
    expected_rows: int,
) -> dict[str, dict[str, Any]]:
    """GX-shaped results (as GX's SUMMARY format words them) of the ``VERSION_CHECKS``."""
    rows, nulls = ids.rows, ids.nulls
    dup_rows, dup_examples = duplicates
    k = min(nulls, MAX_EXAMPLES)
    not_null: dict[str, Any] = {
        "element_count": rows,
        "unexpected_count": nulls,
        "partial_unexpected_list": [None] * k,
        "partial_unexpected_index_list": [{"row_id": None}] * k,
        "partial_unexpected_counts": _partial_counts([None] * k),
        "unexpected_index_column_names": ["row_id"],
    }
    listed = [rid for rid, size in dup_examples for _ in range(size)][:MAX_EXAMPLES]
    unique: dict[str, Any] = {
        "element_count": rows,
        "missing_count": nulls,
        "unexpected_count": dup_rows,
        "partial_unexpected_list": listed,
        "partial_unexpected_index_list": [{"row_id": rid} for rid in listed],
        "partial_unexpected_counts": [
            {"value": rid, "count": size} for rid, size in sorted(dup_examples, key=lambda e: -e[1])
        ],
        "unexpected_index_column_names": ["row_id"],
    }
    for result in (not_null, unique):
        _percentages(result)
    found = {
        "row_count": (rows == expected_rows, {"observed_value": rows}),
        "row_id_not_null": (nulls == 0, not_null),
        "row_id_unique": (dup_rows == 0, unique),
    }
    return {
        name: {
            "success": success,
            "expectation_config": copy.deepcopy(configs[name]),
            "result": result,
            "meta": {},
            "exception_info": {
                "raised_exception": False,
                "exception_message": None,
                "exception_traceback": None,
            },
        }
        for name, (success, result) in found.items()
    }


# --- summing GX's per-batch results -------------------------------------------------------------

_SUMMED = ("element_count", "unexpected_count", "missing_count")
_LISTED = ("partial_unexpected_list", "partial_unexpected_index_list")


class _GxSum:
    """GX's per-batch results summed into the result one batch of every row gives: counts add
    up, the example lists are the first ``MAX_EXAMPLES`` in row order, percentages are computed
    again from the sums, and an expectation succeeds when it succeeded on every batch."""

    def __init__(self) -> None:
        self.batches = 0
        self._first: dict[str, Any] = {}
        self._evrs: dict[str, dict[str, Any]] = {}

    def add(self, result: dict[str, Any]) -> None:
        self.batches += 1
        if not self._first:
            self._first = {k: v for k, v in result.items() if k != "results"}
        for evr in result.get("results", []):
            name = _check_name(evr)
            if name is None:
                continue
            if name not in self._evrs:
                self._evrs[name] = copy.deepcopy(evr)
            else:
                _merge(self._evrs[name], evr)

    def result(
        self, order: list[str], version_results: dict[str, dict[str, Any]]
    ) -> dict[str, Any]:
        """The summed result with the version checks' results, in ``order`` (the suite's)."""
        batch_id = next(
            (
                e["expectation_config"]["kwargs"]["batch_id"]
                for e in self._evrs.values()
                if "batch_id" in (e.get("expectation_config") or {}).get("kwargs", {})
            ),
            None,
        )
        for evr in version_results.values():
            if batch_id is not None:
                evr["expectation_config"]["kwargs"]["batch_id"] = batch_id
        evrs = {**self._evrs, **version_results}
        for evr in self._evrs.values():
            _percentages(evr.get("result") or {})
        results = [evrs[n] for n in order if n in evrs]
        # GX's own result could hold one we did not tag; kept, after ours
        results += [e for n, e in evrs.items() if n not in order]
        good = sum(bool(e.get("success")) for e in results)
        meta = dict(self._first.get("meta") or {})
        # one batch's fingerprint would misdescribe the whole; the batch count says how it ran
        markers = {
            k: v for k, v in (meta.get("batch_markers") or {}).items() if "fingerprint" not in k
        }
        meta.update(batch_markers=markers, augflow_batches=self.batches)
        return {
            **self._first,
            "meta": meta,
            "results": results,
            "statistics": {
                "evaluated_expectations": len(results),
                "successful_expectations": good,
                "unsuccessful_expectations": len(results) - good,
                "success_percent": good / len(results) * 100 if results else None,
            },
            "success": good == len(results),
        }


def _check_name(evr: dict[str, Any]) -> str | None:
    name = ((evr.get("expectation_config") or {}).get("meta") or {}).get("augflow_check")
    return str(name) if name is not None else None


def _merge(total: dict[str, Any], evr: dict[str, Any]) -> None:
    total["success"] = bool(total.get("success")) and bool(evr.get("success"))
    if (evr.get("exception_info") or {}).get("raised_exception") and not (
        total.get("exception_info") or {}
    ).get("raised_exception"):
        total["exception_info"] = evr["exception_info"]
    into = total.setdefault("result", {})
    res = evr.get("result") or {}
    for key in _SUMMED:
        if key in res:
            into[key] = int(into.get(key) or 0) + int(res[key] or 0)
    for key in _LISTED:
        if key in res:
            into[key] = [*(into.get(key) or []), *res[key]][:MAX_EXAMPLES]
    if "partial_unexpected_counts" in res:
        into["partial_unexpected_counts"] = _partial_counts(into["partial_unexpected_list"])


def _partial_counts(values: list[Any]) -> list[dict[str, Any]]:
    # as GX counts them: over the example values (not every unexpected row), most common first
    # a pair expectation's values are pairs: lists once GX's result went through JSON
    hashable = [
        tuple(v.values()) if isinstance(v, dict) else tuple(v) if isinstance(v, list) else v
        for v in values
    ]
    try:
        ranked = sorted(Counter(hashable).most_common(MAX_EXAMPLES), key=lambda x: (-x[1], x[0]))
    except TypeError:  # values that do not sort together (GX gives up here too)
        ranked = Counter(hashable).most_common(MAX_EXAMPLES)
    return [{"value": list(v) if isinstance(v, tuple) else v, "count": n} for v, n in ranked]


def _percentages(res: dict[str, Any]) -> None:
    # as GX's map expectations compute them: ``unexpected_percent`` leaves missing values out
    n, bad = res.get("element_count"), res.get("unexpected_count")
    if n is None or bad is None:
        return
    total = bad / n * 100 if n else None
    if "missing_count" in res:
        present = n - res["missing_count"]
        res["missing_percent"] = res["missing_count"] / n * 100 if n else None
        res["unexpected_percent_total"] = total
        res["unexpected_percent_nonmissing"] = bad / present * 100 if n and present else None
        res["unexpected_percent"] = res["unexpected_percent_nonmissing"]
    else:
        res["unexpected_percent"] = total


# --- the entry point -----------------------------------------------------------------------


def validate_rows(
    storage: Storage,
    request: AugmentRequest,
    version: str,
    data_files: list[str],
    expected_rows: int,
    num_quarantined: int,
    planned_items: int,
    batch_rows: int = BATCH_ROWS,
) -> QualityReport:
    """Run the quality gate over a run's committed shards and write its report.

    ``data_files`` are storage keys of committed shard Parquet files; ``expected_rows`` is the
    manifest count of output rows; ``planned_items`` the number of planned output rows that the
    quarantine fraction is measured against; ``batch_rows`` the most rows GX validates at once
    (the result does not depend on it). Returns the report whether or not it passed.
    """
    files = [f for f in data_files if f]
    gx_result, specs, total = _run_gx(storage, request, files, expected_rows, batch_rows)

    checks: list[QualityCheck] = []
    for evr in gx_result.get("results", []):
        name = _check_name(evr)
        if name is not None and name in specs:
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

    metrics = _effect_and_set_checks(storage, request, files, checks)

    # Proxy usefulness (issue 13, tasks/proxy.py): off unless quality.min_proxy_lift is set.
    if request.quality.min_proxy_lift is not None:
        from augflow.tasks.proxy import proxy_check  # imports torch: only when asked for

        checks.append(proxy_check(storage, request, files))

    passed = all(c.passed for c in checks) and bool(gx_result.get("success"))
    failed = [_one_line(c) for c in checks if not c.passed]
    stats = {
        "rows": total,
        "expected_rows": expected_rows,
        "num_quarantined": num_quarantined,
        "planned_items": planned_items,
        "quarantine_fraction": round(fraction, 6),
        "data_files": len(files),
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

    publish_data_docs(storage, request, version, gx_result)
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
