"""The gate's set-level checks (tasks/quality_sets.py via validate_rows) over real Parquet shards
and real image folders: near-duplicates, memorisation against `quality.reference`, diversity and
KID against the reference, all streamed shard by shard."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest
from PIL import Image
from quality_rows import photo as _photo
from quality_rows import rows as _rows

from augflow.models.effects import EffectThresholds
from augflow.models.setmetrics import SetThresholds
from augflow.schemas import ROW_SCHEMA, parse_request
from augflow.schemas.request import QualityThresholds
from augflow.tasks.quality_sets import effect_thresholds, set_thresholds
from augflow.tasks.storage import Storage
from augflow.tasks.validate import validate_rows


def _validate(storage: Storage, images: list[np.ndarray], **quality: Any):
    request = parse_request(
        {
            "dataset": "faces",
            "operation": {"kind": "generate", "num_images": len(images)},
            "model": {"id": "tiny"},
            "quality": quality,
        }
    )
    rows = _rows(images)
    files = []
    for n, start in enumerate(range(0, len(rows), 8)):  # several shards: the checks stream
        key = f"runs/r/shards/{n:05d}.parquet"
        storage.write_parquet(key, pa.Table.from_pylist(rows[start : start + 8], schema=ROW_SCHEMA))
        files.append(key)
    return validate_rows(storage, request, "r", files, len(rows), 0, len(rows)), rows


@pytest.fixture
def storage(tmp_path: Path) -> Storage:
    return Storage(str(tmp_path / "out"))


@pytest.fixture
def reference(tmp_path: Path) -> Path:
    folder = tmp_path / "reference"
    folder.mkdir()
    for k in range(24):
        Image.fromarray(_photo(1000 + k)).save(folder / f"ref{k:02d}.png")
    return folder


def _check(report, name: str):
    return next(c for c in report.checks if c.name == name)


def test_distinct_images_pass_and_every_metric_is_reported(storage, reference) -> None:
    report, _ = _validate(storage, [_photo(k) for k in range(24)], reference=str(reference))
    assert report.passed, report.failed
    names = {c.name for c in report.checks}
    assert {"near_duplicates", "memorisation", "diversity", "distribution_kid"} <= names
    m = report.summary().metrics
    assert m["duplicate_fraction"] == 0.0 and m["memorised_fraction"] == 0.0
    assert m["reference_images"] == 24
    assert m["kid"] is not None and 0.5 < m["diversity_ratio"] < 2.0
    assert m["feature_extractor"] == "bundled:tiny"


def test_one_image_for_every_seed_fails_near_duplicates_and_diversity(storage, reference) -> None:
    report, rows = _validate(storage, [_photo(7)] * 20, reference=str(reference))
    assert not report.passed
    failed = {f.split(":")[0] for f in report.failed}
    assert {"near_duplicates", "diversity"} <= failed
    dup = _check(report, "near_duplicates")
    assert dup.observed == pytest.approx(19 / 20) and dup.threshold == pytest.approx(0.01)
    assert dup.examples and set(dup.examples) <= {r["row_id"] for r in rows}
    assert _check(report, "diversity").observed == pytest.approx(0.0, abs=1e-6)


def test_copies_of_the_reference_fail_memorisation(storage, reference) -> None:
    copies = [np.asarray(Image.open(p)) for p in sorted(reference.glob("*.png"))][:12]
    report, rows = _validate(storage, copies, reference=str(reference))
    assert [f.split(":")[0] for f in report.failed] == ["memorisation"]
    memo = _check(report, "memorisation")
    assert memo.observed == 1.0 and memo.threshold == pytest.approx(0.001)
    assert memo.examples[0] in {r["row_id"] for r in rows}
    # without a reference there is nothing to have memorised: no such check
    report, _ = _validate(storage, copies)
    assert "memorisation" not in {c.name for c in report.checks} and report.passed


def test_set_thresholds_and_switch_come_from_the_request(storage, reference) -> None:
    same = [_photo(7)] * 10
    report, _ = _validate(storage, same, max_duplicate_fraction=1.0)
    assert report.passed, report.failed
    report, _ = _validate(storage, same, set_checks=False)
    assert report.passed and "near_duplicates" not in {c.name for c in report.checks}


def test_unreadable_reference_fails_the_gate_with_a_message(storage, tmp_path) -> None:
    report, _ = _validate(storage, [_photo(k) for k in range(4)], reference=str(tmp_path / "nope"))
    check = _check(report, "set_checks")
    assert not check.passed and "nope" in check.detail


def test_every_threshold_is_a_request_field_and_unset_fields_keep_the_hash() -> None:
    fields = set(QualityThresholds.model_fields)
    assert set(EffectThresholds.names()) <= fields
    assert set(SetThresholds.__dataclass_fields__) <= fields
    q = QualityThresholds()
    assert effect_thresholds(q) == EffectThresholds() and set_thresholds(q) == SetThresholds()
    q = QualityThresholds(max_color_shift=9.0, max_hamming=3)
    assert effect_thresholds(q).max_color_shift == 9.0 and set_thresholds(q).max_hamming == 3
    base = {
        "dataset": "x",
        "operation": {"kind": "generate", "num_images": 3},
        "model": {"id": "m"},
    }
    request = parse_request(base)
    # the hash of a request that sets none of the new fields is the one it had before them
    # (computed on main before issue 11)
    assert request.hashed_fields()["quality"] == {
        "min_pixel_std": 2.0,
        "min_faithfulness_psnr": None,
        "max_quarantine_fraction": 0.1,
    }
    assert request.request_hash == (
        "5e8a40093297b31c43f82319fbfa4093670e9008c8d9137a87108220a5600e88"
    )
    assert parse_request({**base, "quality": {"max_kid": 0.1}}).request_hash != request.request_hash


def test_effect_column_summary_is_exact_when_small_and_bounded_when_large() -> None:
    from augflow.tasks.quality_sets import _ColumnSummary

    rng = np.random.default_rng(7)
    small = rng.normal(30, 5, 999)
    exact = _ColumnSummary(capacity=1000)
    for part in np.array_split(small, 7):
        exact.add(part)
    got = exact.metrics("psnr")
    assert got == {
        "psnr_min": small.min(),
        "psnr_median": float(np.median(small)),
        "psnr_max": small.max(),
    }

    big = rng.exponential(2.0, 300_000)  # skewed: a mean would be far from the median
    sampled = _ColumnSummary(capacity=5_000)
    for part in np.array_split(big, 60):  # shard by shard
        sampled.add(part)
    got = sampled.metrics("x")
    assert sampled._sample.filled == 5_000 and sampled.seen == len(big)
    assert (got["x_min"], got["x_max"]) == (big.min(), big.max())
    # the sample's median sits within a percentile of the true one
    rank = float(np.mean(big < got["x_median"]))
    assert abs(rank - 0.5) < 0.01, rank


def test_a_reference_folder_holding_a_fifo_is_read_without_blocking(tmp_path: Path) -> None:
    import os

    from augflow.tasks.quality_sets import iter_source_images, reference_sources

    folder = tmp_path / "reference"
    folder.mkdir()
    for k in range(3):
        Image.fromarray(_photo(2000 + k)).save(folder / f"ref{k}.png")
    os.mkfifo(folder / "a-pipe.png")  # opening it for reading would wait for a writer forever
    request = parse_request(
        {
            "dataset": "faces",
            "operation": {"kind": "generate", "num_images": 4},
            "model": {"id": "tiny"},
            "quality": {"reference": str(folder)},
        }
    )
    seen = [i for ids, _ in iter_source_images(reference_sources(request)) for i in ids]
    assert sorted(seen) == ["ref0.png", "ref1.png", "ref2.png"]


_TORCH_PROBE = """
import sys
from pathlib import Path
sys.path[:0] = [{tests!r}, {tests_root!r}]
from test_quality_sets import _validate
from augflow.tasks.storage import Storage
from quality_rows import photo
quality = {{"reference": {reference!r}}} if {reference!r} else {{}}
report, _ = _validate(Storage({out!r}), [photo(k) for k in range(12)], **quality)
print(sorted(c.name for c in report.checks), "torch" in sys.modules)
"""


@pytest.mark.parametrize("with_reference", [False, True])
def test_torch_is_loaded_only_when_there_is_a_reference(tmp_path, reference, with_reference):
    """The gate of a run with nothing to compare against (generate, no reference) checks
    near-duplicates from hashes and never imports torch into the flow's process: about a second
    of CPU after the last shard of a small run (issue 14). With a reference it loads torch for the
    distribution checks."""
    import subprocess
    import sys

    code = _TORCH_PROBE.format(
        tests=str(Path(__file__).parent),
        tests_root=str(Path(__file__).parent.parent),
        reference=str(reference) if with_reference else "",
        out=str(tmp_path / "out"),
    )
    run = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=False
    )
    assert run.returncode == 0, run.stderr[-3000:]
    names, torch_loaded = run.stdout.strip().rsplit(" ", 1)
    assert "near_duplicates" in names
    assert ("distribution_kid" in names) is with_reference
    assert torch_loaded == str(with_reference)
