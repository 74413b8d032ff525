"""The Arrow schemas of output and quarantine rows, as the readers see them."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from augflow.schemas.rows import (
    IMAGE_TYPE,
    LINEAGE_FIELDS,
    METRIC_COLUMNS,
    METRIC_FIELDS,
    QUARANTINE_SCHEMA,
    ROW_SCHEMA,
)


def _png(color: tuple[int, int, int]) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (4, 3), color).save(buf, format="PNG")
    return buf.getvalue()


def _row(i: int) -> dict[str, object]:
    row: dict[str, object] = {f.name: None for f in ROW_SCHEMA}
    row.update(
        image={"bytes": _png((10 * i, 0, 0)), "path": None},
        row_id=f"r{i}",
        variant=i,
        width=4,
        height=3,
        pixel_mean=0.25,
        decodable=True,
        status="ok",
    )
    return row


def test_every_field_is_nullable_and_names_are_unique() -> None:
    # `datasets` only honours the huggingface metadata when the schema matches its own, which is
    # always nullable.
    for schema in (ROW_SCHEMA, QUARANTINE_SCHEMA):
        assert all(f.nullable for f in schema)
        assert len(set(schema.names)) == len(schema.names)
    assert ROW_SCHEMA.field("image").type == IMAGE_TYPE
    assert {f.name for f in LINEAGE_FIELDS + METRIC_FIELDS} < set(ROW_SCHEMA.names)


def test_metric_columns_exist_and_leave_out_the_image() -> None:
    assert set(METRIC_COLUMNS) <= set(ROW_SCHEMA.names)
    assert "image" not in METRIC_COLUMNS
    assert {"row_id", "source_id", "variant", "has_nan", "faithfulness_psnr"} <= set(METRIC_COLUMNS)


def test_hf_features_match_the_arrow_types() -> None:
    from datasets import Features, Value
    from datasets import Image as HFImage

    meta = json.loads(ROW_SCHEMA.metadata[b"huggingface"])
    features = Features.from_dict(meta["info"]["features"])
    assert isinstance(features["image"], HFImage)
    assert features["seed"] == Value("int64") and features["pixel_mean"] == Value("float32")
    # What `datasets` derives from the metadata is exactly the Arrow schema we write.
    assert features.arrow_schema.remove_metadata() == ROW_SCHEMA.remove_metadata()


def test_parquet_written_with_the_schema_decodes_images_in_datasets(tmp_path: Path) -> None:
    from datasets import load_dataset

    table = pa.Table.from_pylist([_row(i) for i in range(3)], schema=ROW_SCHEMA)
    pq.write_table(table, tmp_path / "shard.parquet")
    ds = load_dataset("parquet", data_files=str(tmp_path / "shard.parquet"), split="train")
    first = ds[1]
    assert isinstance(first["image"], Image.Image) and first["image"].size == (4, 3)
    assert first["image"].getpixel((0, 0)) == (10, 0, 0)
    assert first["row_id"] == "r1" and first["faithfulness_psnr"] is None


def test_quarantine_schema_records_where_and_why() -> None:
    assert {"row_id", "source_id", "source_uri", "source_row", "stage", "reason"} <= set(
        QUARANTINE_SCHEMA.names
    )
    assert "image" not in QUARANTINE_SCHEMA.names
    table = pa.Table.from_pylist(
        [{"row_id": "r", "stage": "decode", "reason": "not an image"}], schema=QUARANTINE_SCHEMA
    )
    assert table.column("source_row").to_pylist() == [None]
