from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from augflow.schemas import InputError, parse_request
from augflow.tasks.inputs import list_sources
from augflow.tasks.plan import make_plan, plan_request


def _req(**over: object):
    body = {
        "dataset": "p",
        "operation": {"kind": "generate", "num_images": 10},
        "model": {"id": "m"},
        "shard_size": 4,
    }
    body.update(over)
    return parse_request(body)


def test_generate_plan_is_pure_and_covers_every_image() -> None:
    a, b = make_plan(_req()), make_plan(_req(execution={"workers": 7}))
    assert a == b
    assert [s.count for s in a.shards] == [4, 4, 2]
    assert a.num_rows == 10 and len({s.shard_id for s in a.shards}) == 3
    assert make_plan(_req(seed=5)).version != a.version


def test_sources_plan_shards_by_output_rows(photos_dir: Path) -> None:
    r = _req(operation={"kind": "img2img", "variants": 2}, inputs=str(photos_dir), shard_size=4)
    plan = plan_request(r)
    assert plan.num_rows == 12  # 6 image files (one corrupt: planned, quarantined later) x 2
    assert [len(s.sources) for s in plan.shards] == [2, 2, 2]
    ids = [src.source_id for s in plan.shards for src in s.sources]
    assert ids == sorted(ids) and "sub/photo-4.png" in ids and "notes.txt" not in ids


def test_new_inputs_keep_old_shards(photos_dir: Path) -> None:
    r = _req(operation={"kind": "denoise"}, inputs=str(photos_dir), shard_size=2)
    before = plan_request(r)
    (photos_dir / "zzz-new.png").write_bytes((photos_dir / "photo-0.png").read_bytes())
    after = plan_request(r)
    assert {s.shard_id for s in before.shards} <= {s.shard_id for s in after.shards}
    assert after.version != before.version


def test_parquet_inputs_use_the_id_column(tmp_path: Path) -> None:
    table = pa.table(
        {"id": ["x", "y"], "image": [{"bytes": b"1", "path": None}, {"bytes": b"2", "path": None}]}
    )
    pq.write_table(table, tmp_path / "in.parquet")
    items = list_sources(_req(operation={"kind": "denoise"}, inputs=str(tmp_path / "in.parquet")))
    assert [(i.source_id, i.row) for i in items] == [("x", 0), ("y", 1)]


@pytest.mark.parametrize("what", ["missing", "empty", "no-image-column"])
def test_unusable_inputs_name_the_uri(tmp_path: Path, what: str) -> None:
    target = tmp_path / what
    if what == "empty":
        target.mkdir()
    if what == "no-image-column":
        target = tmp_path / "t.parquet"
        pq.write_table(pa.table({"a": [1]}), target)
    with pytest.raises(InputError) as err:
        list_sources(_req(operation={"kind": "denoise"}, inputs=str(target)))
    assert str(target.name) in str(err.value)
