"""A Parquet input's integer `label` (or `class_label`) column becomes each source's label, which
every output row made from it carries as its class_label (issue 13)."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from augflow.schemas import InputError, ShardSpec, iter_work_items, parse_request
from augflow.tasks.inputs import list_sources


def _req(inputs: Path):
    return parse_request(
        {
            "dataset": "in",
            "operation": {"kind": "img2img", "variants": 2},
            "model": {"id": "m"},
            "inputs": str(inputs),
        }
    )


def _write(path: Path, **columns: pa.Array) -> Path:
    n = len(next(iter(columns.values())))
    image = pa.array([{"bytes": b"x", "path": None}] * n)
    pq.write_table(pa.table({"image": image, **columns}), path)
    return path


def test_labels_reach_every_work_item_of_their_source(tmp_path: Path) -> None:
    path = _write(
        tmp_path / "l.parquet",
        id=pa.array(["b", "a", "c"]),
        label=pa.array([3, 1, None], type=pa.int64()),
    )
    request = _req(path)
    sources = list_sources(request)
    assert [(s.source_id, s.label) for s in sources] == [("a", 1), ("b", 3), ("c", None)]
    items = list(iter_work_items(request, ShardSpec(shard_id="s", index=0, sources=tuple(sources))))
    assert [(i.source_id, i.variant, i.class_label) for i in items] == [
        ("a", 0, 1),
        ("a", 1, 1),
        ("b", 0, 3),
        ("b", 1, 3),
        ("c", 0, None),
        ("c", 1, None),
    ]


def test_class_label_is_read_when_there_is_no_label_column(tmp_path: Path) -> None:
    # a registered augflow version used as inputs names its labels class_label
    path = _write(tmp_path / "v.parquet", class_label=pa.array([0, 2], type=pa.int32()))
    assert [s.label for s in list_sources(_req(path))] == [0, 2]


def test_no_label_column_means_no_labels(tmp_path: Path) -> None:
    path = _write(tmp_path / "n.parquet", id=pa.array(["x", "y"]))
    assert [s.label for s in list_sources(_req(path))] == [None, None]


@pytest.mark.parametrize(
    ("values", "match"),
    [
        (pa.array(["cat", "dog"]), "must be integers"),
        (pa.array([1.0, 2.0]), "must be integers"),
        (pa.array([0, -1]), "negative labels"),
    ],
)
def test_unusable_label_columns_are_refused(tmp_path: Path, values: pa.Array, match: str) -> None:
    path = _write(tmp_path / "bad.parquet", label=values)
    with pytest.raises(InputError, match=match):
        list_sources(_req(path))
