"""Records between plan, workers and registry: ids, seeds, work items and results."""

from __future__ import annotations

import pytest

from augflow.schemas import parse_request
from augflow.schemas.markers import CommitMarker
from augflow.schemas.records import (
    Plan,
    RunOutcome,
    ShardResult,
    ShardSpec,
    SourceItem,
    derive_id,
    derive_seed,
    iter_work_items,
    variants_per_source,
)


def _request(**over: object):
    body: dict[str, object] = {
        "dataset": "cats",
        "operation": {"kind": "img2img", "variants": 3, "prompt": "a cat"},
        "inputs": "/in",
        "model": {"id": "m"},
    }
    body.update(over)
    return parse_request(body)


def test_derived_ids_and_seeds_are_stable_and_bounded() -> None:
    assert derive_id("a", 1) == derive_id("a", 1) != derive_id("a", 2)
    assert len(derive_id("a")) == 24 and len(derive_id("a", length=12)) == 12
    seeds = {derive_seed("h", 0, f"s{i}", v) for i in range(50) for v in range(3)}
    assert len(seeds) == 150 and all(0 <= s < 2**63 for s in seeds)
    assert derive_seed("h", 0, "s", 0) != derive_seed("h", 1, "s", 0)


def test_shard_spec_counts_sources_or_a_range() -> None:
    items = tuple(SourceItem(source_id=f"{i}.png", uri=f"file:///in/{i}.png") for i in range(3))
    assert ShardSpec(shard_id="s", index=0, sources=items).num_sources == 3
    assert ShardSpec(shard_id="s", index=0, first=10, count=7).num_sources == 7


def test_variants_per_source() -> None:
    assert variants_per_source(_request()) == 3
    assert variants_per_source(_request(operation={"kind": "denoise"})) == 1


def test_work_items_of_sources_cover_every_variant_in_order() -> None:
    request = _request()
    shard = ShardSpec(
        shard_id="s",
        index=0,
        sources=(
            SourceItem(source_id="a.png", uri="file:///in/a.png"),
            SourceItem(source_id="t.parquet#0", uri="file:///in/t.parquet", row=0),
        ),
    )
    items = list(iter_work_items(request, shard))
    assert [(i.source_id, i.variant) for i in items] == [
        ("a.png", 0),
        ("a.png", 1),
        ("a.png", 2),
        ("t.parquet#0", 0),
        ("t.parquet#0", 1),
        ("t.parquet#0", 2),
    ]
    assert items[3].source_row == 0 and items[0].source_row is None
    assert {i.prompt for i in items} == {"a cat"}
    assert items[0].row_id == derive_id(request.request_hash, "a.png", 0)
    assert items[0].seed == derive_seed(request.request_hash, request.seed, "a.png", 0)


def test_work_items_of_a_generate_range() -> None:
    request = parse_request(
        {
            "dataset": "gen",
            "operation": {"kind": "generate", "num_images": 10, "class_labels": [1, 2, 3]},
            "model": {"id": "m"},
        }
    )
    items = list(iter_work_items(request, ShardSpec(shard_id="s", index=1, first=4, count=3)))
    assert [i.source_id for i in items] == [
        "generated/000000004",
        "generated/000000005",
        "generated/000000006",
    ]
    assert [i.class_label for i in items] == [2, 3, 1]  # image index modulo the labels
    assert all(i.source_uri is None and i.variant == 0 for i in items)


def test_shard_result_from_marker_copies_what_the_marker_holds() -> None:
    marker = CommitMarker(
        shard_id="s1",
        data_file="runs/0123456789abcdef/shards/s1.parquet",
        quarantine_file="runs/0123456789abcdef/quarantine/s1.parquet",
        num_rows=5,
        num_quarantined=1,
        data_bytes=999,
        model_revision="sha256:abc",
        scheduler="ddim",
        row_ids_sha256="0" * 64,
    )
    result = ShardResult.from_marker(marker, "carried", seconds=1.5)
    assert result.model_dump() == {
        "shard_id": "s1",
        "data_file": marker.data_file,
        "quarantine_file": marker.quarantine_file,
        "num_rows": 5,
        "num_quarantined": 1,
        "data_bytes": 999,
        "seconds": 1.5,
        "status": "carried",
        "model_revision": "sha256:abc",
        "scheduler": "ddim",
        "node_id": "",
    }


def test_records_are_frozen_and_refuse_unknown_statuses() -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="status"):
        ShardResult(
            shard_id="s",
            data_file="k",
            quarantine_file=None,
            num_rows=0,
            num_quarantined=0,
            data_bytes=0,
            seconds=0,
            status="lost",
        )
    plan = Plan(dataset="d", request_hash="h", version="v", shards=(), num_rows=0)
    with pytest.raises(ValidationError):
        plan.version = "w"
    assert plan.carried == () and plan.base_version is None


def test_run_outcome_ref() -> None:
    outcome = RunOutcome(
        dataset="cats",
        version="abc",
        status="registered",
        uri="file:///out/registry/cats/versions/abc.json",
        num_rows=1,
        num_quarantined=0,
        shards_computed=1,
        shards_skipped=0,
        report_uri=None,
        preview_uri=None,
    )
    assert outcome.ref == "cats@abc"
