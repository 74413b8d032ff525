"""The quality gate over real Parquet shards written with the real row schema."""

from __future__ import annotations

import io
import json
from typing import Any

import numpy as np
import pyarrow as pa
import pytest
from PIL import Image

from augflow.schemas import ROW_SCHEMA, AugmentRequest, parse_request
from augflow.schemas.quality import QualityReport
from augflow.tasks.layout import RunLayout
from augflow.tasks.storage import Storage
from augflow.tasks.validate import validate_rows


def _png(seed: int, size: int = 8) -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def _row(i: int, **overrides: Any) -> dict[str, Any]:
    row: dict[str, Any] = {
        "image": {"bytes": _png(i), "path": None},
        "row_id": f"{i:04d}" + "ab" * 10,
        "dataset": "cats",
        "request_hash": "h" * 64,
        "shard_id": "shard-0",
        "source_id": f"src/{i}.png",
        "source_uri": f"file:///in/src/{i}.png",
        "source_row": None,
        "variant": 0,
        "seed": i,
        "operation": "img2img",
        "model_id": "tiny",
        "model_revision": "local",
        "scheduler": "ddim",
        "steps": 2,
        "params": "{}",
        "class_label": None,
        "prompt": None,
        "width": 8,
        "height": 8,
        "expected_width": 8,
        "expected_height": 8,
        "decodable": True,
        "pixel_mean": 120.0,
        "pixel_std": 60.0,
        "has_nan": False,
        "is_blank": False,
        "faithfulness_psnr": 30.0,
        # effect metrics of a plausible img2img variant (models/effects.py)
        "source_psnr": 25.0,
        "source_ssim": 0.6,
        "color_shift": 3.0,
        "status": "ok",
    }
    row.update(overrides)
    return row


def _write_shards(
    storage: Storage, run_key: str, rows: list[dict[str, Any]], per_file: int = 10
) -> list[str]:
    keys = []
    for n, start in enumerate(range(0, len(rows), per_file)):
        key = f"{run_key}/shards/{n:05d}.parquet"
        storage.write_parquet(
            key, pa.Table.from_pylist(rows[start : start + per_file], schema=ROW_SCHEMA)
        )
        keys.append(key)
    return keys


def _request(**quality: Any) -> AugmentRequest:
    # the form checks are tested here on made-up rows; the set-level checks (which read the
    # inputs) have their own tests below
    quality = {"set_checks": False, **quality}
    return parse_request(
        {
            "dataset": "cats",
            "operation": {"kind": "img2img", "variants": 1},
            "inputs": "/in",
            "model": {"id": "tiny"},
            "quality": quality,
        }
    )


@pytest.fixture
def storage(tmp_path) -> Storage:
    return Storage(str(tmp_path / "out"))


def _run(
    storage: Storage, rows: list[dict[str, Any]], request: AugmentRequest | None = None, **kw: Any
) -> QualityReport:
    files = _write_shards(storage, "runs/r1", rows)
    args = {"expected_rows": len(rows), "num_quarantined": 0, "planned_items": len(rows)}
    args.update(kw)
    return validate_rows(storage, request or _request(), "r1", files, **args)


def _report_key(name: str, version: str = "r1") -> str:
    return f"{RunLayout(_request().request_hash).quality_dir(version)}/{name}"


def _check(report: QualityReport, name: str):
    return next(c for c in report.checks if c.name == name)


def test_passing_table_writes_both_reports(storage: Storage) -> None:
    report = _run(storage, [_row(i) for i in range(25)])
    assert report.passed, report.failed
    assert report.failed == []
    assert report.statistics["rows"] == 25
    assert report.report_uri == storage.uri(_report_key("report.md"))
    md = storage.read_bytes(_report_key("report.md")).decode()
    assert "PASSED" in md and "✗" not in md
    data = storage.read_json(_report_key("report.json"))
    assert data["summary"]["passed"] is True
    assert data["great_expectations"]["success"] is True
    names = {c.name for c in report.checks}
    assert {
        "row_count",
        "row_id_unique",
        "decodable",
        "has_nan",
        "is_blank",
        "width",
        "height",
        "pixel_std",
        "quarantine_fraction",
    } <= names
    # No faithfulness threshold was asked for, so no faithfulness check runs.
    assert "faithfulness_psnr" not in names


def test_nan_rows_fail_and_are_named(storage: Storage) -> None:
    rows = [_row(i, has_nan=i in (3, 7, 11)) for i in range(20)]
    report = _run(storage, rows)
    assert not report.passed
    assert len(report.failed) == 1
    line = report.failed[0]
    assert line.startswith("has_nan: 3 of 20 rows contain NaN")
    assert "e.g. row 0003" in line
    check = _check(report, "has_nan")
    assert check.failed_rows == 3
    assert set(check.examples) == {rows[i]["row_id"] for i in (3, 7, 11)}
    md = storage.read_bytes(_report_key("report.md")).decode()
    assert "FAILED" in md and "has_nan" in md and rows[3]["row_id"] in md
    # The JSON report is strict JSON (no NaN tokens) and carries GX's own result.
    raw = storage.read_bytes(_report_key("report.json")).decode()
    json.loads(raw, parse_constant=lambda c: pytest.fail(f"non-JSON constant {c}"))


def test_zero_rows_fail_on_row_count_and_still_write_a_report(storage: Storage) -> None:
    report = validate_rows(
        storage, _request(), "empty", [], expected_rows=12, num_quarantined=0, planned_items=12
    )
    assert not report.passed
    assert [f.split(":")[0] for f in report.failed] == ["row_count"]
    assert "found 0" in report.failed[0]
    assert storage.exists(_report_key("report.md", "empty"))
    assert storage.exists(_report_key("report.json", "empty"))


def test_row_count_mismatch_fails(storage: Storage) -> None:
    report = _run(storage, [_row(i) for i in range(5)], expected_rows=6)
    assert not report.passed
    assert _check(report, "row_count").observed == 5


def test_wrong_sizes_fail(storage: Storage) -> None:
    rows = [_row(i) for i in range(10)]
    rows[2] = _row(2, width=16)
    rows[4] = _row(4, height=4)
    rows[5] = _row(5, height=4)
    report = _run(storage, rows)
    assert not report.passed
    assert _check(report, "width").failed_rows == 1
    assert _check(report, "height").failed_rows == 2
    assert _check(report, "width").examples == [rows[2]["row_id"]]


def test_duplicate_row_ids_blank_and_undecodable_fail(storage: Storage) -> None:
    rows = [_row(i) for i in range(10)]
    rows[1] = _row(1, row_id=rows[0]["row_id"])
    rows[6] = _row(6, is_blank=True, pixel_std=0.0)
    rows[8] = _row(8, decodable=False)
    report = _run(storage, rows)
    failed = {f.split(":")[0] for f in report.failed}
    assert failed == {"row_id_unique", "is_blank", "pixel_std", "decodable"}


def test_quarantine_fraction_over_threshold_fails(storage: Storage) -> None:
    rows = [_row(i) for i in range(18)]
    report = _run(
        storage, rows, _request(max_quarantine_fraction=0.05), num_quarantined=2, planned_items=20
    )
    assert not report.passed
    assert report.failed == [
        "quarantine_fraction: 2 of 20 planned items quarantined (10.0%; allowed at most 5.0%)"
    ]


def test_faithfulness_threshold(storage: Storage) -> None:
    rows = [_row(i, faithfulness_psnr=15.0 if i < 2 else 30.0) for i in range(10)]
    rows[9] = _row(9, faithfulness_psnr=None)
    report = _run(storage, rows, _request(min_faithfulness_psnr=20.0))
    assert {f.split(":")[0] for f in report.failed} == {
        "faithfulness_psnr",
        "faithfulness_psnr_present",
    }
    assert _check(report, "faithfulness_psnr").failed_rows == 2
    # The same rows pass when no threshold is set.
    assert _run(storage, rows).passed


def test_faithfulness_is_not_checked_for_generate(storage: Storage) -> None:
    request = parse_request(
        {
            "dataset": "cats",
            "operation": {"kind": "generate", "num_images": 4},
            "model": {"id": "tiny"},
            "quality": {"min_faithfulness_psnr": 20.0, "set_checks": False},
        }
    )
    rows = [_row(i, operation="generate", faithfulness_psnr=None) for i in range(4)]
    report = _run(storage, rows, request)
    assert report.passed, report.failed
    assert "faithfulness_psnr" not in {c.name for c in report.checks}


# --- effect checks (issue 11): thresholds from the request's `quality`, failures name rows -----


def test_effect_check_failures_name_threshold_observed_and_rows(storage: Storage) -> None:
    rows = [_row(i, source_psnr=100.0 if i in (2, 5) else 25.0) for i in range(12)]
    report = _run(storage, rows)
    assert not report.passed
    check = _check(report, "img2img_not_a_copy")
    assert not check.passed and check.failed_rows == 2 and check.observed == 2
    assert set(check.examples) == {rows[2]["row_id"], rows[5]["row_id"]}
    assert "source_psnr < 40" in str(check.threshold)
    assert [f.split(":")[0] for f in report.failed] == ["img2img_not_a_copy"]
    assert _check(report, "img2img_related_to_source").passed
    # every effect metric lands in the report and in the registry entry's summary
    assert report.metrics["source_psnr_max"] == 100.0
    assert report.metrics["source_psnr_min"] == 25.0
    assert report.summary().metrics == report.metrics
    md = storage.read_bytes(_report_key("report.md")).decode()
    assert "img2img_not_a_copy" in md and "source_psnr_median" in md
    # a null metric is not a pass
    rows[0] = _row(0, source_psnr=None)
    nulls = _run(storage, rows[:1] + [_row(i) for i in range(1, 12)])
    assert _check(nulls, "img2img_not_a_copy").examples == [rows[0]["row_id"]]


def test_effect_thresholds_come_from_the_request(storage: Storage) -> None:
    rows = [_row(i, source_psnr=100.0 if i == 2 else 25.0) for i in range(12)]
    loose = _request(img2img_max_source_psnr=101.0)
    assert loose.request_hash != _request().request_hash  # a threshold set is a request field
    report = _run(storage, rows, loose)
    assert report.passed, report.failed
    assert "source_psnr < 101" in str(_check(report, "img2img_not_a_copy").threshold)
    off = _run(storage, rows, _request(effect_checks=False))
    assert off.passed and "img2img_not_a_copy" not in {c.name for c in off.checks}


# --- streaming (issue 11 item 4): batches of at most `batch_rows` rows, results summed ----------


def _gx_result(storage: Storage, request: AugmentRequest) -> dict[str, Any]:
    key = RunLayout(request.request_hash).quality_json("r1")
    return storage.read_json(key)["great_expectations"]


def _gx_results(storage: Storage, request: AugmentRequest) -> list[dict[str, Any]]:
    # the summed GX result per check, without what names one validation (ids, batch ids)
    data = _gx_result(storage, request)
    out = []
    for evr in data["results"]:
        config = {k: v for k, v in evr["expectation_config"].items() if k != "id"}
        config["kwargs"] = {k: v for k, v in config["kwargs"].items() if k != "batch_id"}
        out.append({**evr, "expectation_config": config})
    return out


def test_batched_validation_equals_one_batch(storage: Storage) -> None:
    # 37 rows in 4 files of 10, 10, 10, 7; failures of every kind spread across files, more
    # failing rows than MAX_EXAMPLES for has_nan
    rows = [
        _row(
            i,
            has_nan=i % 4 == 1,
            width=16 if i in (3, 29) else 8,
            faithfulness_psnr=None if i == 33 else (15.0 if i in (8, 21) else 30.0),
            pixel_std=0.5 if i == 12 else 60.0,
        )
        for i in range(37)
    ]
    rows[14] = _row(14, row_id=rows[2]["row_id"])  # a duplicate in another file
    rows[30] = _row(30, row_id=None)
    request = _request(min_faithfulness_psnr=20.0, effect_checks=False)
    files = _write_shards(storage, "runs/r1", rows)
    assert len(files) == 4

    def gate(batch_rows: int) -> tuple[QualityReport, list[dict[str, Any]], int]:
        report = validate_rows(storage, request, "r1", files, 37, 0, 37, batch_rows=batch_rows)
        batches = _gx_result(storage, request)["meta"]["augflow_batches"]
        return report, _gx_results(storage, request), batches

    whole, whole_gx, n_whole = gate(1_000)
    assert n_whole == 1
    failed = {c.name for c in whole.checks if not c.passed}
    assert failed == {
        "row_id_not_null",
        "row_id_unique",
        "has_nan",
        "width",
        "pixel_std",
        "faithfulness_psnr",
        "faithfulness_psnr_present",
    }
    assert _check(whole, "has_nan").failed_rows == 9
    assert len(_check(whole, "has_nan").examples) == 5
    # 3 rows a batch cuts every file; 7 gathers two files into a batch and cuts them
    for batch_rows, batches in ((3, 13), (7, 6), (10, 4)):
        report, gx, n = gate(batch_rows)
        assert n == batches, batch_rows
        assert [c.model_dump() for c in report.checks] == [c.model_dump() for c in whole.checks]
        assert report.failed == whole.failed
        assert gx == whole_gx, batch_rows
        assert report.statistics["gx_statistics"] == whole.statistics["gx_statistics"]


def test_a_row_id_shared_across_shard_files_is_caught_and_named(storage: Storage) -> None:
    rows = [_row(i) for i in range(25)]
    rows[23] = _row(23, row_id=rows[4]["row_id"])  # file 0 and file 2
    rows[17] = _row(17, row_id=rows[4]["row_id"])  # and file 1: three rows hold it
    rows[20] = _row(20, row_id=rows[11]["row_id"])  # files 1 and 2
    files = _write_shards(storage, "runs/r1", rows)
    report = validate_rows(storage, _request(), "r1", files, 25, 0, 25, batch_rows=5)
    check = _check(report, "row_id_unique")
    assert not check.passed
    assert check.failed_rows == 5
    assert check.examples == [rows[4]["row_id"], rows[11]["row_id"]]  # in row order
    assert [f.split(":")[0] for f in report.failed] == ["row_id_unique"]
    assert report.failed[0].startswith("row_id_unique: 5 of 25 rows share a row_id")
    assert f"e.g. row {rows[4]['row_id'][:12]}" in report.failed[0]
    gx = {
        e["expectation_config"]["meta"]["augflow_check"]: e
        for e in _gx_results(storage, _request())
    }
    assert gx["row_id_unique"]["result"]["partial_unexpected_counts"] == [
        {"value": rows[4]["row_id"], "count": 3},
        {"value": rows[11]["row_id"], "count": 2},
    ]
    # the same ids each in one row again: nothing left to name
    rows[23], rows[17], rows[20] = _row(23), _row(17), _row(20)
    assert _run(storage, rows).passed


def test_a_null_row_id_is_caught_and_not_taken_for_a_duplicate(storage: Storage) -> None:
    rows = [_row(i) for i in range(25)]
    rows[7] = _row(7, row_id=None)
    rows[18] = _row(18, row_id=None)
    files = _write_shards(storage, "runs/r1", rows)
    report = validate_rows(storage, _request(), "r1", files, 25, 0, 25, batch_rows=4)
    assert [f.split(":")[0] for f in report.failed] == ["row_id_not_null"]
    assert report.failed[0] == "row_id_not_null: 2 of 25 rows have no row_id"
    assert _check(report, "row_id_not_null").failed_rows == 2
    assert _check(report, "row_id_unique").passed


def test_row_count_is_the_sum_over_batches_either_way(storage: Storage) -> None:
    rows = [_row(i) for i in range(23)]
    files = _write_shards(storage, "runs/r1", rows)
    short = validate_rows(storage, _request(), "r1", files, 24, 0, 24, batch_rows=4)
    assert [f.split(":")[0] for f in short.failed] == ["row_count"]
    assert _check(short, "row_count").observed == 23
    assert "required exactly 24 rows (the manifest count); found 23" in short.failed[0]
    # more rows than the manifest said (the digests outgrow their buffer): counted, and a
    # duplicate among the extra rows is still found
    rows[22] = _row(22, row_id=rows[21]["row_id"])
    files = _write_shards(storage, "runs/r1", rows)
    extra = validate_rows(storage, _request(), "r1", files, 2, 0, 2, batch_rows=4)
    assert {f.split(":")[0] for f in extra.failed} == {"row_count", "row_id_unique"}
    assert _check(extra, "row_count").observed == 23
    assert _check(extra, "row_id_unique").examples == [rows[21]["row_id"]]


def test_a_first_digest_collision_is_not_a_duplicate(storage: Storage) -> None:
    # every row's first digest handed over as repeated, as if all of them collided: the second,
    # independent digest must clear them all
    from augflow.tasks.validate import _digests, _duplicate_row_ids

    rows = [_row(i) for i in range(25)]
    files = _write_shards(storage, "runs/r1", rows)
    ids = np.array([r["row_id"] for r in rows], dtype=object)
    assert _duplicate_row_ids(storage, files, np.unique(_digests(ids, 0))) == (0, [])
    rows[9] = _row(9, row_id=rows[3]["row_id"])
    files = _write_shards(storage, "runs/r1", rows)
    ids = np.array([r["row_id"] for r in rows], dtype=object)
    assert _duplicate_row_ids(storage, files, np.unique(_digests(ids, 0))) == (
        2,
        [(rows[3]["row_id"], 2)],
    )
