"""GX Data Docs: the gate's suite through a Checkpoint, its HTML stored beside the quality report."""

from __future__ import annotations

import html
import io
import logging
import re
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest
from PIL import Image

from augflow.schemas import ROW_SCHEMA, AugmentRequest, parse_request
from augflow.schemas.quality import QualityReport
from augflow.tasks.gx_docs import data_docs_uri, publish_data_docs
from augflow.tasks.layout import RunLayout, data_docs_beside
from augflow.tasks.storage import Storage
from augflow.tasks.validate import validate_rows


def _request(**quality: Any) -> AugmentRequest:
    # made-up rows: the effect and set checks (issue 11, tests/tasks/test_quality_sets.py) would
    # refuse them and read the (absent) inputs; Data Docs are about the GX suite
    quality = {"effect_checks": False, "set_checks": False, **quality}
    return parse_request(
        {
            "dataset": "cats",
            "operation": {"kind": "img2img", "variants": 1},
            "inputs": "/in",
            "model": {"id": "tiny"},
            "quality": quality,
        }
    )


def _row(i: int, **overrides: Any) -> dict[str, Any]:
    buf = io.BytesIO()
    pixels = np.random.default_rng(i).integers(0, 255, (8, 8, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(buf, "PNG")
    row: dict[str, Any] = {name: None for name in ROW_SCHEMA.names}
    row.update(
        image={"bytes": buf.getvalue(), "path": None},
        row_id=f"{i:04d}" + "ab" * 10,
        dataset="cats",
        request_hash="h" * 64,
        shard_id="shard-0",
        source_id=f"src/{i}.png",
        source_uri=f"file:///in/src/{i}.png",
        variant=0,
        seed=i,
        operation="img2img",
        model_id="tiny",
        model_revision="local",
        scheduler="ddim",
        steps=2,
        params="{}",
        width=8,
        height=8,
        expected_width=8,
        expected_height=8,
        decodable=True,
        pixel_mean=120.0,
        pixel_std=60.0,
        has_nan=False,
        is_blank=False,
        faithfulness_psnr=30.0,
        status="ok",
    )
    row.update(overrides)
    return row


def _run(
    storage: Storage, rows: list[dict[str, Any]], request: AugmentRequest | None = None
) -> QualityReport:
    """The real gate over one real shard file of ``rows``, as version r1."""
    key = "runs/r1/shards/00000.parquet"
    storage.write_parquet(key, pa.Table.from_pylist(rows, schema=ROW_SCHEMA))
    n = len(rows)
    return validate_rows(storage, request or _request(), "r1", [key], n, 0, n)


@pytest.fixture
def storage(tmp_path: Path) -> Storage:
    return Storage(str(tmp_path / "out"))


def _text(page: bytes) -> str:
    # the visible text of a page: GX renders a check's notes and counts as plain HTML text
    raw = re.sub(r"<(script|style).*?</\1>", " ", page.decode(), flags=re.S)
    return re.sub(r"\s+", " ", html.unescape(re.sub(r"<[^>]+>", " ", raw)))


def _links(page: bytes) -> list[str]:
    # the index links pages in hrefs and in its tables' JavaScript data; @ comes URL-encoded
    found = re.findall(r"(?:expectations|validations)/[^\"'\s\\]+?\.html", page.decode())
    return sorted({f.replace("%40", "@") for f in found})


def test_data_docs_of_a_failed_gate_sit_beside_its_report_and_name_every_check(
    storage: Storage,
) -> None:
    rows = [_row(i, has_nan=i in (3, 7)) for i in range(16)]
    request = _request(min_faithfulness_psnr=20.0)
    report = _run(storage, rows, request)
    assert not report.passed

    layout = RunLayout(request.request_hash)
    # the suite ran through a Checkpoint: GX stamps the result it returns with the Checkpoint's
    # and the validation definition's ids (a bare batch.validate sets neither)
    meta = storage.read_json(layout.quality_json("r1"))["great_expectations"]["meta"]
    assert meta["checkpoint_id"] and meta["validation_id"]
    index_key = layout.data_docs_index("r1")
    assert data_docs_beside(report.report_key) == index_key
    assert index_key.startswith(layout.quality_dir("r1") + "/")
    index = storage.read_bytes(index_key)
    assert "Data Docs | augflow" in _text(index)  # GX's index page of our site

    # the index links the suite's page and this validation's page, both stored beside it
    folder = index_key.rsplit("/", 1)[0]
    links = _links(index)
    suite_pages = [h for h in links if h.startswith("expectations/")]
    runs = [h for h in links if h.startswith("validations/")]
    assert suite_pages == ["expectations/augflow-cats.html"]
    assert len(runs) == 1 and "/r1/" in runs[0]
    suite_text = _text(storage.read_bytes(f"{folder}/{suite_pages[0]}"))
    run_text = _text(storage.read_bytes(f"{folder}/{runs[0]}"))

    gx_checks = [c for c in report.checks if c.name != "quarantine_fraction"]
    assert len(gx_checks) == 11
    for check in gx_checks:
        assert f"augflow check {check.name} " in suite_text, check.name
    # GX's own verdict on the same rows: the NaN check is the one that failed, on 2 of 16 rows
    assert "Status: Failed" in run_text
    assert "Evaluated Expectations 11 Successful Expectations 10 Unsuccessful Expectations 1" in (
        run_text
    )
    assert "2 unexpected values found. 12.5% of 16 total rows" in run_text
    assert "greater than or equal to 20.0" in run_text  # the request's PSNR threshold

    # only the pages and the one asset they link: no 4 MB of GX fonts and GIFs per version
    files = {k for k in _walk(storage, folder)}
    assert files == {
        index_key,
        f"{folder}/{suite_pages[0]}",
        f"{folder}/{runs[0]}",
        f"{folder}/static/images/favicon.ico",
    }
    assert sum(storage.size(k) for k in files) < 200_000
    assert data_docs_uri(storage, report.report_uri) == storage.uri(index_key)


def test_validating_a_version_again_replaces_its_data_docs(storage: Storage) -> None:
    first = _run(storage, [_row(i, has_nan=i == 2) for i in range(6)])
    assert not first.passed
    second = _run(storage, [_row(i) for i in range(6)])
    assert second.passed
    index_key = data_docs_beside(second.report_key)
    folder = index_key.rsplit("/", 1)[0]
    runs = [k for k in _walk(storage, folder) if "/validations/" in k]
    assert len(runs) == 1  # the first run's page went with the index that linked it
    assert runs[0].removeprefix(folder + "/") in _links(storage.read_bytes(index_key))
    assert "Status: Succeeded" in _text(storage.read_bytes(runs[0]))


def test_data_docs_that_cannot_be_made_leave_the_gate_alone(
    storage: Storage, caplog: pytest.LogCaptureFixture
) -> None:
    report = _run(storage, [_row(i) for i in range(4)])
    assert report.passed
    gx_result = storage.read_json(RunLayout(_request().request_hash).quality_json("r1"))[
        "great_expectations"
    ]
    broken = {
        **gx_result,
        "results": [{"expectation_config": {"type": "expect_no_such_thing", "kwargs": {}}}],
    }
    with caplog.at_level(logging.WARNING, logger="augflow.tasks.gx_docs"):
        out = publish_data_docs(storage, _request(), "r2", broken)
    assert out is None
    assert "Data Docs of cats@r2 were not written" in caplog.text
    assert "expect_no_such_thing" in caplog.text
    assert (
        data_docs_uri(storage, storage.uri(RunLayout(_request().request_hash).quality_report("r2")))
        is None
    )
    assert _walk(storage, RunLayout(_request().request_hash).data_docs_dir("r2")) == []


def _walk(storage: Storage, folder: str) -> list[str]:
    out, stack = [], [folder]
    while stack:
        for key in storage.list(stack.pop()):
            if Path(storage.path(key)).is_dir():  # local roots: an emptied folder may stay
                stack.append(key)
            else:
                out.append(key)
    return sorted(out)
