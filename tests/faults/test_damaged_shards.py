"""Committed shards damaged after their commit (truncated, overwritten) are caught against their
markers on reuse — a re-run, an incremental refresh — logged by shard, and recomputed; whatever
slips past fails validation as a storage error naming the file, never as a quality failure."""

from __future__ import annotations

from pathlib import Path

import pytest
from faults.checks import (
    assert_one_version,
    generate_request,
    photo_pngs,
    rows_of,
    warnings_of,
)
from faults.fault_models import make_fault_model

from augflow.schemas import parse_request
from augflow.schemas.errors import StorageError
from augflow.tasks import commits
from augflow.tasks.execute import execute_plan
from augflow.tasks.plan import plan_request
from augflow.tasks.register import list_versions
from augflow.tasks.storage import Storage
from augflow.tasks.validate import validate_rows

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("prefect_server", "fault_ray")]


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])


def test_a_rerun_recomputes_a_truncated_shard_instead_of_crashing(
    tmp_path: Path,
) -> None:
    from augflow.flows.augment import augment

    out = tmp_path / "out"
    request = generate_request(make_fault_model(tmp_path / "model"), str(out), "damaged")
    plan = plan_request(request)
    # A first run committed every shard, then died before registering; a shard file was then
    # truncated (a full disk, a bad copy).
    results = execute_plan(request, plan)
    victim = results[1]
    _truncate(out / victim.data_file)
    with pytest.raises(StorageError, match=victim.data_file):
        # what the old validation met: now a storage error naming the file, not a crash
        validate_rows(
            Storage(str(out)),
            request,
            plan.version,
            [r.data_file for r in results],
            expected_rows=6,
            num_quarantined=0,
            planned_items=6,
        )
    with warnings_of(commits.__name__) as warnings:
        outcome = augment(request)
    assert outcome.status == "registered"
    assert (outcome.shards_computed, outcome.shards_skipped) == (1, 2)
    logged = "\n".join(warnings)
    assert f"shard {victim.shard_id} is damaged" in logged and "bytes where" in logged
    assert_one_version(Storage(str(out)), "damaged", 6)


def test_a_refresh_drops_a_damaged_carried_shard_and_plans_its_sources_again(
    tmp_path: Path, tiny_model: Path
) -> None:
    from augflow.flows.augment import augment

    photos = tmp_path / "photos"
    photos.mkdir()
    pngs = photo_pngs(5, size=16)
    for i, png in enumerate(pngs[:4]):
        (photos / f"p{i}.png").write_bytes(png)
    out = tmp_path / "out"
    request = parse_request(
        {
            "dataset": "refresh",
            "operation": {"kind": "img2img", "variants": 2, "strength": 0.5},
            "inputs": str(photos),
            "model": {"id": str(tiny_model)},
            "output": str(out),
            "steps": 2,
            "image_size": 16,
            "shard_size": 4,
            "execution": {"workers": 1, "device": "cpu"},
            # a random tiny model's variants fail issue 11's effect and set checks; not tested here
            "quality": {"effect_checks": False, "set_checks": False},
        }
    )
    first = augment(request)
    assert first.num_rows == 8
    storage = Storage(str(out))
    (v1,) = list_versions(storage, "refresh")
    damaged = v1.files[0]
    path = out / damaged.key
    original = path.read_bytes()
    data = bytearray(original)
    data[len(data) // 2] ^= 0xFF  # same size, other bytes: only the digest can tell
    path.write_bytes(bytes(data))
    (photos / "p4.png").write_bytes(pngs[4])  # the nightly refresh finds one new photo

    with warnings_of(commits.__name__) as warnings:
        second = augment(request)
    assert second.status == "registered" and second.version != first.version
    assert any(
        f"{damaged.key}" in w and "will be recomputed instead of carried" in w for w in warnings
    ), warnings
    v2 = next(v for v in list_versions(storage, "refresh") if v.version == second.version)
    # Its sources were planned again into the same shard (ids hash the sources), recomputed to
    # the very bytes its marker recorded, and rewritten in place: v1 is whole again too.
    assert damaged.key in [f.key for f in v2.files] and path.read_bytes() == original
    v1_ids = rows_of(storage, v1)
    assert len(v1_ids) == len(set(v1_ids)) == 8
    ids = rows_of(storage, v2)
    assert len(ids) == len(set(ids)) == v2.num_rows == 10  # 5 photos x 2 variants, once each
    sources = storage.read_parquet([f.key for f in v2.files], columns=["source_id"]).column(0)
    assert sorted(set(sources.to_pylist())) == [f"p{i}.png" for i in range(5)]
