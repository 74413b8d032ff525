"""Registered versions made the way the flow makes them, minus Prefect and Ray: a real plan, real
shards computed by the shard worker with a tiny model, a real registry entry. For the tests of
what reads a registered version (card, export, readers); the quality gate is not what they test,
so the entry records a passed gate without running it."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any

from augflow.schemas import parse_request
from augflow.schemas.quality import QualitySummary
from augflow.schemas.registry import RegistryEntry
from augflow.tasks.layout import RunLayout
from augflow.tasks.plan import plan_request
from augflow.tasks.register import build_entry, register_version
from augflow.tasks.shard_worker import ShardWorker
from augflow.tasks.storage import Storage


def make_version(
    root: Path | str,
    model: Path,
    dataset: str = "cats",
    *,
    num_images: int = 4,
    seed: int = 0,
    shard_size: int = 2,
    class_labels: list[int] | None = None,
    card: dict[str, Any] | None = None,
    created_at: datetime | None = None,
) -> RegistryEntry:
    """Compute and register one version of ``dataset`` under ``root``; returns its entry."""
    op: dict[str, Any] = {"kind": "generate", "num_images": num_images}
    if class_labels is not None:
        op["class_labels"] = class_labels
    body: dict[str, Any] = {
        "dataset": dataset,
        "operation": op,
        "model": {"id": str(model)},
        "output": str(root),
        "steps": 2,
        "seed": seed,
        "shard_size": shard_size,
    }
    if card is not None:
        body["card"] = card
    request = parse_request(body)
    plan = plan_request(request)
    worker = ShardWorker(request, device="cpu")
    results = [worker.process(s) for s in plan.shards]
    storage = Storage(request.output)
    quality = QualitySummary(
        passed=True,
        failed=[],
        report_key=RunLayout(request.request_hash).quality_report(plan.version),
    )
    entry = build_entry(storage, request, plan.version, results, quality, created_at=created_at)
    return register_version(storage, entry).entry
