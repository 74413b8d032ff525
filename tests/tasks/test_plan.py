from __future__ import annotations

import pickle
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from augflow.schemas import InputError, RequestError, parse_request
from augflow.schemas.records import Plan, ShardRanges, ShardSpec, SourceItem, derive_id
from augflow.schemas.request import MAX_SHARDS
from augflow.tasks.inputs import SKIP_HIDDEN, list_sources
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
    assert [s.first for s in a.shards] == [0, 4, 8]
    assert a.num_rows == 10 and len({s.shard_id for s in a.shards}) == 3
    assert make_plan(_req(seed=5)).version != a.version


def test_generate_shards_are_lazy_and_the_same_as_materialised_ones() -> None:
    r = _req(operation={"kind": "generate", "num_images": 10_000_000}, shard_size=1_000)
    plan = make_plan(r)
    assert isinstance(plan.shards, ShardRanges) and len(plan.shards) == 10_000
    h = r.request_hash
    last = plan.shards[-1]
    assert (last.index, last.first, last.count) == (9_999, 9_999_000, 1_000)
    assert last.shard_id == derive_id(h, "range", 9_999_000, 1_000, length=16)
    assert plan.shards[2:4] == [plan.shards[2], plan.shards[3]]
    with pytest.raises(IndexError):
        plan.shards[10_000]
    # The version is what hashing every materialised shard id gives (ids of old plans hold).
    ids = sorted(derive_id(h, "range", f, 1_000, length=16) for f in range(0, 10_000_000, 1_000))
    assert plan.version == derive_id(h, *ids, length=12)
    # It survives the trips a plan makes: JSON (Prefect) and pickle (Ray).
    again = Plan.model_validate_json(plan.model_dump_json())
    assert again == plan and isinstance(again.shards, ShardRanges)
    assert pickle.loads(pickle.dumps(plan)) == plan
    spec = plan.shards[5]
    assert isinstance(spec, ShardSpec) and spec.num_sources == 1_000


def test_too_many_shards_are_refused_when_the_request_is_read() -> None:
    with pytest.raises(RequestError) as err:
        _req(operation={"kind": "generate", "num_images": 100_000_000}, shard_size=1)
    assert err.value.field == "shard_size"
    assert f"{MAX_SHARDS}" in str(err.value) and "shard_size >= 1000" in str(err.value)
    with pytest.raises(RequestError) as err:
        _req(operation={"kind": "generate", "num_images": 100_000_001})
    assert err.value.field == "operation.num_images"


def test_sources_plan_shards_by_output_rows(photos_dir: Path) -> None:
    r = _req(operation={"kind": "img2img", "variants": 2}, inputs=str(photos_dir), shard_size=4)
    plan = plan_request(r)
    assert plan.num_rows == 12  # 6 files (one corrupt: planned, quarantined later) x 2
    assert isinstance(plan.shards, tuple)
    assert [len(s.sources) for s in plan.shards] == [2, 2, 2]
    ids = [src.source_id for s in plan.shards for src in s.sources]
    assert ids == sorted(ids) and "sub/photo-4.png" in ids and ".notes.txt" not in ids
    # every object under the inputs: an input or a skip by rule
    objects = [p for p in photos_dir.rglob("*") if p.is_file()]
    assert plan.num_inputs == 6 == len(objects) - sum(plan.skipped.values())
    assert plan.skipped == {SKIP_HIDDEN: 1}


def test_too_many_shards_over_inputs_are_refused_after_listing(tmp_path: Path) -> None:
    r = _req(operation={"kind": "img2img", "variants": 8}, inputs=str(tmp_path), shard_size=4)
    sources = [
        SourceItem(source_id=f"{i:07d}.png", uri=f"file:///x/{i:07d}.png")
        for i in range(MAX_SHARDS + 1)
    ]
    with pytest.raises(RequestError) as err:
        make_plan(r, sources)
    assert err.value.field == "shard_size" and "shard_size >= 16" in str(err.value)


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
        plan_request(_req(operation={"kind": "denoise"}, inputs=str(target)))
    assert str(target.name) in str(err.value)
