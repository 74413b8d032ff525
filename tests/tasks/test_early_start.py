"""Start-up ahead of the flow (tasks/execute.py ``start_early``): the pool starts and computes
before ``execute_plan`` is called, which then attaches to it — one pool, shards reported as
computed by this run — on a real local Ray."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import ray

from augflow.schemas import parse_request
from augflow.tasks import execute
from augflow.tasks.layout import RunLayout
from augflow.tasks.plan import plan_request
from augflow.tasks.ray_pool import cluster_cpus

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("ray_local")]


def _request(model: Path, root: Path, n: int = 4, **over: object):
    body: dict[str, object] = {
        "dataset": "early",
        "operation": {"kind": "generate", "num_images": n},
        "model": {"id": str(model)},
        "output": str(root),
        "steps": 2,
        "shard_size": 2,
        "execution": {"device": "cpu"},
    }
    body.update(over)
    return parse_request(body)


def _wait_for(check, timeout: float = 180.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not met in time")
        time.sleep(0.2)


def test_execute_attaches_to_the_pool_started_early(tiny_model: Path, tmp_path: Path) -> None:
    request = _request(tiny_model, tmp_path)
    plan = plan_request(request)
    execute.start_early(request)
    # the first shard is committed before anybody asked for results
    marker = tmp_path / RunLayout(request.request_hash).commit_marker(plan.shards[0].shard_id)
    _wait_for(marker.exists)
    attached = time.time()
    seen = []
    results = execute.execute_plan(request, plan, on_result=seen.append)

    assert [r.shard_id for r in results] == [s.shard_id for s in plan.shards]
    assert [r.status for r in results] == ["computed"] * len(plan.shards)  # not "skipped"
    assert sorted(r.shard_id for r in seen) == sorted(s.shard_id for s in plan.shards)
    stats = execute.last_pool_stats
    assert stats is not None and stats["pool_started_at"] < attached  # the early pool, reused
    assert len(stats["actors"]) == min(len(plan.shards), cluster_cpus())
    # every actor got a shard of its own, and the first one computed before execute_plan
    assert all(a["first_batch_at"] for a in stats["actors"])
    assert min(a["first_batch_at"] for a in stats["actors"]) < attached
    assert {a["model_loads"] for a in stats["actors"]} == {1}


def test_start_early_is_idempotent_and_cancel_ends_its_actors(
    tiny_model: Path, tmp_path: Path
) -> None:
    request = _request(tiny_model, tmp_path, n=2)
    execute.start_early(request)
    execute.start_early(request)  # already started: nothing new
    key = (request.request_hash, request.output)
    pool = execute._early[key].pool
    assert pool is not None and len(pool.slots) == 1
    pid = ray.get(pool.slots[0].actor.stats.remote())["pid"]
    execute.cancel_early(request)
    assert key not in execute._early

    def gone() -> bool:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        return False

    _wait_for(gone, 60)


def test_the_progress_channel_opens_early_only_for_listeners_to_come(
    tiny_model: Path, tmp_path: Path
) -> None:
    # augflow run: the display attaches after the pool started, so the channel opens anyway;
    # the flow run by a worker: nobody listens now or later, so no channel polls its actors
    channels = {}
    for later in (True, False):
        request = _request(tiny_model, tmp_path / str(later), n=2)
        execute.start_early(request, listeners_later=later)
        pool = execute._early[(request.request_hash, request.output)].pool
        assert pool is not None
        channels[later] = pool.channel.open
        execute.cancel_early(request)
    assert channels == {True: True, False: False}


def test_an_outdated_early_plan_reports_only_the_flows_shards(
    tiny_model: Path, tmp_path: Path
) -> None:
    request = _request(tiny_model, tmp_path, n=6)
    early_plan = plan_request(request)
    execute.start_early(request, early_plan)
    plan = early_plan.model_copy(update={"shards": early_plan.shards[:2]})
    results = execute.execute_plan(request, plan)
    assert [r.shard_id for r in results] == [s.shard_id for s in plan.shards]
    assert all(r.status in ("computed", "skipped") for r in results)


def test_bytes_do_not_depend_on_the_number_of_workers(tiny_model: Path, tmp_path: Path) -> None:
    """The default layout keeps each actor's threads whatever `workers` is, and the micro-batch
    composition is fixed per shard: one and two workers write the same images."""
    images = {}
    for workers in (1, 2):
        request = _request(
            tiny_model,
            tmp_path / f"w{workers}",
            n=6,
            shard_size=3,
            execution={"device": "cpu", "workers": workers},
        )
        results = execute.execute_plan(request, plan_request(request))
        rows = {}
        for r in results:
            table = pq.read_table(tmp_path / f"w{workers}" / r.data_file)
            for row in table.select(["row_id", "image"]).to_pylist():
                rows[row["row_id"]] = row["image"]["bytes"]
        images[workers] = rows
    assert len(images[1]) == 6 and images[1] == images[2]


def test_nothing_to_compute_starts_no_ray(tiny_model: Path, tmp_path: Path) -> None:
    """An already computed (e.g. registered) request must not pay for a Ray start."""
    import json
    import subprocess
    import sys

    body = {
        "dataset": "early-done",
        "operation": {"kind": "generate", "num_images": 2},
        "model": {"id": str(tiny_model)},
        "output": str(tmp_path),
        "steps": 2,
        "shard_size": 2,
    }
    code = f"""
import json, ray
from augflow.schemas import parse_request
from augflow.tasks import execute
from augflow.tasks.plan import plan_request
from augflow.tasks.shard_worker import ShardWorker
request = parse_request(json.loads({json.dumps(json.dumps(body))}))
plan = plan_request(request)
worker = ShardWorker(request, device="cpu")
for shard in plan.shards:
    worker.process(shard)  # committed without Ray
execute.start_early(request)
print("ray started:", ray.is_initialized())
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip().splitlines()[-1] == "ray started: False"
