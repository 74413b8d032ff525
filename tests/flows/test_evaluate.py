"""`augflow evaluate NAME@VERSION` on a registered version, on a local root and on S3 (the
SeaweedFS fixture): the real CLI in a subprocess, a version registered through the real tasks."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from PIL import Image
from quality_rows import photo as _photo
from quality_rows import rows as _rows

from augflow.schemas import ROW_SCHEMA, parse_request
from augflow.schemas.records import ShardResult
from augflow.tasks.register import build_entry, register_version
from augflow.tasks.storage import Storage
from augflow.tasks.validate import validate_rows

AUGFLOW = [sys.executable, "-m", "augflow.flows.cli"]


def _register(root: str, images: list[np.ndarray]) -> str:
    storage = Storage(root)
    request = parse_request(
        {
            "dataset": "blobs",
            "operation": {"kind": "generate", "num_images": len(images)},
            "model": {"id": "tiny"},
            "output": root,
        }
    )
    rows = _rows(images)
    results = []
    for n, start in enumerate(range(0, len(rows), 5)):
        key = f"runs/{request.request_hash[:12]}/shards/{n:05d}.parquet"
        chunk = rows[start : start + 5]
        size = storage.write_parquet(key, pa.Table.from_pylist(chunk, schema=ROW_SCHEMA))
        results.append(ShardResult(
            shard_id=f"{n:05d}", data_file=key, quarantine_file=None, num_rows=len(chunk),
            num_quarantined=0, data_bytes=size, seconds=0.0, status="computed",
        ))  # fmt: skip
    report = validate_rows(
        storage, request, "v1", [r.data_file for r in results], len(rows), 0, len(rows)
    )
    assert report.passed, report.failed
    register_version(storage, build_entry(storage, request, "v1", results, report.summary()))
    return "blobs@v1"


def _evaluate(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*AUGFLOW, "evaluate", *args],
        env=dict(os.environ),
        capture_output=True,
        text=True,
        timeout=300,
    )


def _check_evaluate(root: str, tmp_path: Path) -> None:
    images = [_photo(k) for k in range(12)]
    ref = _register(root, images)
    proc = _evaluate(ref, "--root", root, "--json")
    assert proc.returncode == 0, proc.stderr[-2000:]
    doc = json.loads(proc.stdout)
    assert doc["passed"] and doc["rows"] == 12
    assert doc["metrics"]["duplicate_fraction"] == 0.0
    assert doc["metrics"]["unique_fraction"] == 1.0
    assert {c["name"] for c in doc["checks"]} == {"near_duplicates"}  # no reference: no more
    assert doc["registered_metrics"]["duplicate_fraction"] == 0.0  # what the gate recorded

    # a reference holding three of the images: memorisation fails, the rows are named, exit 1
    folder = tmp_path / "training"
    folder.mkdir()
    for k in (0, 4, 9):
        Image.fromarray(images[k]).save(folder / f"train{k}.png")
    for k in range(10):
        Image.fromarray(_photo(500 + k)).save(folder / f"other{k}.png")
    proc = _evaluate(ref, "--root", root, "--reference", str(folder), "--json")
    assert proc.returncode == 1, proc.stderr[-2000:]
    doc = json.loads(proc.stdout)
    memo = next(c for c in doc["checks"] if c["name"] == "memorisation")
    assert not memo["passed"] and memo["observed"] == pytest.approx(3 / 12)
    assert set(memo["examples"]) == {"row0000", "row0004", "row0009"}
    assert doc["metrics"]["kid"] is not None and doc["metrics"]["reference_images"] == 13
    # the table form names the failing check too
    table = _evaluate(ref, "--root", root, "--reference", str(folder))
    assert table.returncode == 1 and "memorisation" in table.stdout
    missing = _evaluate("blobs@v9", "--root", root)
    assert missing.returncode == 3 and "v9" in missing.stderr


def test_evaluate_a_local_version(tmp_path: Path) -> None:
    _check_evaluate(str(tmp_path / "out"), tmp_path)


@pytest.mark.slow
def test_evaluate_a_version_on_s3(s3_root: str, tmp_path: Path) -> None:
    _check_evaluate(s3_root, tmp_path)
