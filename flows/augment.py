"""The augment flow: plan → execute → validate → register, with artifacts. Composition only.

Right after planning, the flow starts the shard pool (Ray, the actors — warm ones where the
cluster keeps them — and the first shards) and the background import of the quality gate's
library, so checking the registry and the Prefect bookkeeping overlap the actors' start-up; the
execute step attaches to that pool. ``augflow run`` starts all of this even before the flow
(:mod:`augflow.flows.startup`), and then these calls find it running.
"""

from __future__ import annotations

from prefect import flow

from augflow.flows.artifacts import publish_artifacts
from augflow.flows.startup import warm_up_validation
from augflow.flows.steps import (
    execute_step,
    find_registered_step,
    plan_step,
    preview_step,
    register_step,
    validate_step,
)
from augflow.schemas.errors import QualityGateError
from augflow.schemas.records import Plan, RunOutcome
from augflow.schemas.request import AugmentRequest
from augflow.tasks import execute, layout
from augflow.tasks.storage import Storage


@flow(name="augment", validate_parameters=True, persist_result=False)
def augment(request: AugmentRequest) -> RunOutcome:
    """Turn one dataset request into a registered, quality-checked dataset version."""
    plan = plan_step(request)
    execute.start_early(request, plan)
    warm_up_validation()
    try:
        return _after_plan(request, plan)
    finally:
        # a pool the execute step did not take (already registered, or an earlier step failed)
        execute.cancel_early(request)


def _after_plan(request: AugmentRequest, plan: Plan) -> RunOutcome:
    storage = Storage(request.output)
    existing = find_registered_step(request, plan)
    if existing is not None:
        return RunOutcome(
            dataset=existing.name,
            version=existing.version,
            status="already_registered",
            uri=storage.uri(layout.registry_entry(existing.name, existing.version)),
            num_rows=existing.num_rows,
            num_quarantined=existing.num_quarantined,
            shards_computed=0,
            shards_skipped=len(plan.shards),
            report_uri=storage.uri(existing.quality.report_key),
            preview_uri=None,
            skipped=plan.skipped,
        )
    results = execute_step(request, plan)
    report = validate_step(request, plan, results)
    preview = preview_step(request, plan, results)
    if not report.passed:
        publish_artifacts(
            request,
            plan,
            results,
            "checks failed, nothing registered",
            None,
            report.report_uri,
            report.failed,
            preview,
            metrics=report.metrics,
        )
        raise QualityGateError(request.dataset, report.failed, report.report_uri)
    outcome = register_step(request, plan, results, report)
    publish_artifacts(
        request,
        plan,
        results,
        "registered" if outcome.created else "already registered",
        outcome.uri,
        report.report_uri,
        [],
        preview,
        metrics=report.metrics,
    )
    return RunOutcome(
        dataset=request.dataset,
        version=plan.version,
        status="registered" if outcome.created else "already_registered",
        uri=outcome.uri,
        num_rows=outcome.entry.num_rows,
        num_quarantined=outcome.entry.num_quarantined,
        shards_computed=sum(r.status == "computed" for r in results),
        shards_skipped=sum(r.status != "computed" for r in results),
        report_uri=report.report_uri,
        preview_uri=preview,
        skipped=plan.skipped,
    )
