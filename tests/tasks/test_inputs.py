"""Listing the inputs of a request on real local files: image folders, Parquet files and
registered versions. Listing reads names and row ids, never pixels."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from augflow.schemas import InputError, parse_request
from augflow.schemas.quality import QualitySummary
from augflow.schemas.registry import FileRef, ModelInfo, RegistryEntry
from augflow.tasks import layout
from augflow.tasks.inputs import list_sources
from augflow.tasks.storage import Storage


def _req(inputs: str, output: str | None = None):
    body: dict[str, object] = {
        "dataset": "in",
        "operation": {"kind": "denoise"},
        "model": {"id": "m"},
        "inputs": inputs,
    }
    if output:
        body["output"] = output
    return parse_request(body)


def _images_table(ids: list[str] | None, n: int, id_col: str = "id") -> pa.Table:
    cols: dict[str, list[object]] = {"image": [{"bytes": b"x", "path": None}] * n}
    if ids is not None:
        cols[id_col] = ids
    return pa.table(cols)


def test_a_folder_lists_images_recursively_skipping_hidden_and_other_files(
    photos_dir: Path,
) -> None:
    (photos_dir / ".DS_Store.png").write_bytes(b"hidden")
    (photos_dir / "UPPER.PNG").write_bytes(b"not decoded while listing")
    items = list_sources(_req(str(photos_dir)))
    ids = [i.source_id for i in items]
    assert ids == sorted(ids)
    assert ids == [
        "UPPER.PNG",
        "broken.png",  # planned; it becomes a quarantine row when decoded
        "photo-0.png",
        "photo-1.jpg",
        "photo-2.png",
        "photo-3.jpg",
        "sub/photo-4.png",
    ]
    first = next(i for i in items if i.source_id == "sub/photo-4.png")
    assert first.uri == f"file://{photos_dir / 'sub' / 'photo-4.png'}" and first.row is None


def test_a_single_image_file(photos_dir: Path) -> None:
    items = list_sources(_req(str(photos_dir / "photo-0.png")))
    assert [(i.source_id, i.uri) for i in items] == [
        ("photo-0.png", f"file://{photos_dir / 'photo-0.png'}")
    ]


def test_parquet_rows_get_the_id_column_or_their_position(tmp_path: Path) -> None:
    pq.write_table(_images_table(["b", "a"], 2, id_col="row_id"), tmp_path / "with-ids.parquet")
    (tmp_path / "nested").mkdir()
    pq.write_table(_images_table(None, 3), tmp_path / "nested" / "plain.parquet")
    items = list_sources(_req(str(tmp_path)))
    assert [(i.source_id, i.row) for i in items] == [
        ("a", 1),
        ("b", 0),
        ("nested/plain.parquet#0", 0),
        ("nested/plain.parquet#1", 1),
        ("nested/plain.parquet#2", 2),
    ]
    assert items[0].uri == f"file://{tmp_path / 'with-ids.parquet'}"


def test_duplicate_ids_are_refused(tmp_path: Path) -> None:
    pq.write_table(_images_table(["same", "same"], 2), tmp_path / "dup.parquet")
    with pytest.raises(InputError, match="duplicate source ids"):
        list_sources(_req(str(tmp_path / "dup.parquet")))


def test_a_file_that_is_neither_image_nor_parquet_is_refused(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(InputError, match=r"neither an image nor a \.parquet"):
        list_sources(_req(str(tmp_path / "notes.txt")))


def test_a_registered_version_lists_its_rows(tmp_path: Path) -> None:
    out = Storage(str(tmp_path / "out"))
    key = "runs/0123456789abcdef/shards/s1.parquet"
    size = out.write_parquet(key, _images_table(["r2", "r1"], 2, id_col="row_id"))
    entry = RegistryEntry(
        name="cats",
        version="v1",
        created_at=datetime(2026, 1, 1, tzinfo=UTC),
        files=[FileRef(key=key, rows=2, bytes=size)],
        num_rows=2,
        num_quarantined=0,
        request={},
        request_hash="0123456789abcdef" * 4,
        code_version="test",
        model=ModelInfo(id="m"),
        quality=QualitySummary(passed=True, report_key="runs/r.md"),
    )
    out.write_json(layout.registry_entry("cats", "v1"), entry.model_dump(mode="json"))
    for ref in ("cats@v1", "cats@latest"):
        items = list_sources(_req(ref, output=str(tmp_path / "out")))
        assert [(i.source_id, i.row, i.uri) for i in items] == [
            ("r1", 1, out.uri(key)),
            ("r2", 0, out.uri(key)),
        ]
