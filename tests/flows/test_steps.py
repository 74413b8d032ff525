"""The Prefect tasks of the augment flow: one task run per step, never cached, composing the
plain functions of augflow.tasks (real Prefect server, real local Ray, a tiny real model)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from prefect.cache_policies import NO_CACHE

from augflow.flows import steps
from augflow.schemas import parse_request
from augflow.schemas.records import ShardResult
from augflow.tasks import progress

STEPS = {
    "plan": steps.plan_step,
    "find-registered": steps.find_registered_step,
    "execute": steps.execute_step,
    "validate": steps.validate_step,
    "preview": steps.preview_step,
    "register": steps.register_step,
}


def test_steps_are_named_and_never_cached_or_persisted() -> None:
    for name, task in STEPS.items():
        assert task.name == name
        assert task.cache_policy is NO_CACHE, name
        assert task.persist_result is False, name


@pytest.mark.slow
@pytest.mark.usefixtures("prefect_server", "ray_local")
def test_the_steps_compose_into_a_registered_version(tiny_model: Path, tmp_path: Path) -> None:
    from prefect import flow, get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    request = parse_request(
        {
            "dataset": "steps",
            "operation": {"kind": "generate", "num_images": 3},
            "model": {"id": str(tiny_model)},
            "output": str(tmp_path / "out"),
            "steps": 2,
            "shard_size": 2,
        }
    )

    @flow(name="steps-test", persist_result=False)
    def composed() -> dict[str, Any]:
        plan = steps.plan_step(request)
        before = steps.find_registered_step(request, plan)
        results = steps.execute_step(request, plan)
        report = steps.validate_step(request, plan, results)
        preview = steps.preview_step(request, plan, results)
        outcome = steps.register_step(request, plan, results, report)
        after = steps.find_registered_step(request, plan)
        return {
            "plan": plan,
            "before": before,
            "results": results,
            "report": report,
            "preview": preview,
            "outcome": outcome,
            "after": after,
        }

    events: list[progress.Event] = []
    with progress.listening(events.append):
        state = composed(return_state=True)
    out = state.result()

    plan = out["plan"]
    # the phases in order, the plan, then each shard once (its micro-batches before it)
    phases = [e.name for e in events if isinstance(e, progress.Phase)]
    assert phases == ["planning", "computing", "validating", "registering"]
    assert [e for e in events if isinstance(e, progress.Planned)] == [
        progress.Planned(total_rows=3, shards=2)
    ]
    shards = [e.shard_id for e in events if isinstance(e, ShardResult)]
    assert sorted(shards) == sorted(s.shard_id for s in plan.shards)
    batches = [e for e in events if isinstance(e, progress.RowsDone)]
    # reported from the Ray actors, one per micro-batch, fire-and-forget: a report still in flight
    # when the pool ends may be dropped (the shard results above are what counts)
    assert 0 < sum(b.rows for b in batches) <= 3
    assert out["before"] is None
    assert [r.num_rows for r in out["results"]] == [2, 1]
    report = out["report"]
    assert report.passed, report.failed
    # validate_step checks the row count against the plan, so the gate saw all 3 rows
    assert any(c.name.startswith("row_count") and c.observed == 3 for c in report.checks)
    assert out["preview"] and Path(out["preview"].removeprefix("file://")).is_file()
    outcome = out["outcome"]
    assert outcome.created and outcome.entry.version == plan.version
    assert outcome.entry.num_rows == 3 and outcome.entry.quality == report.summary()
    assert out["after"] == outcome.entry

    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(
            flow_run_filter=FlowRunFilter(
                id=FlowRunFilterId(any_=[state.state_details.flow_run_id])
            )
        )
    names = sorted(r.name.rsplit("-", 1)[0] for r in runs)
    assert names == sorted([*STEPS, "find-registered"])  # one task run per call, none per shard
