"""The Prefect tasks of the augment flow: thin wrappers over the plain functions in augflow.tasks.

A flow run creates a fixed handful of task runs (plan, execute, validate, preview, register),
however many shards the plan has; Ray does the per-shard fan-out inside ``execute``.
"""

from __future__ import annotations

from prefect import task
from prefect.cache_policies import NO_CACHE

from augflow.flows.artifacts import shard_progress_artifact
from augflow.schemas.errors import VersionNotFoundError
from augflow.schemas.quality import QualityReport
from augflow.schemas.records import Plan, ShardResult
from augflow.schemas.registry import RegistryEntry
from augflow.schemas.request import AugmentRequest
from augflow.tasks import progress
from augflow.tasks.execute import execute_plan
from augflow.tasks.layout import RunLayout
from augflow.tasks.plan import plan_request
from augflow.tasks.preview import build_preview
from augflow.tasks.register import RegisterOutcome, build_entry, get_version, register_version
from augflow.tasks.storage import Storage
from augflow.tasks.validate import validate_rows

# Inputs are requests and small records; nothing is worth caching between runs, and hashing them
# for a cache key would only cost time: every task below has cache_policy=NO_CACHE and
# persist_result=False.


@task(name="plan", cache_policy=NO_CACHE, persist_result=False)
def plan_step(request: AugmentRequest) -> Plan:
    progress.phase("planning")
    plan = plan_request(request)
    progress.emit(progress.Planned.of(plan))
    return plan


@task(name="find-registered", cache_policy=NO_CACHE, persist_result=False)
def find_registered_step(request: AugmentRequest, plan: Plan) -> RegistryEntry | None:
    try:
        return get_version(Storage(request.output), plan.dataset, plan.version)
    except VersionNotFoundError:
        return None


@task(name="execute", cache_policy=NO_CACHE, persist_result=False)
def execute_step(request: AugmentRequest, plan: Plan) -> list[ShardResult]:
    progress.phase("computing")
    with shard_progress_artifact(request, plan):
        return execute_plan(request, plan, on_result=progress.emit)


@task(name="validate", cache_policy=NO_CACHE, persist_result=False)
def validate_step(request: AugmentRequest, plan: Plan, results: list[ShardResult]) -> QualityReport:
    progress.phase("validating")
    return validate_rows(
        Storage(request.output),
        request,
        version=plan.version,
        data_files=[r.data_file for r in results if r.data_file],
        expected_rows=plan.num_rows - sum(r.num_quarantined for r in results),
        num_quarantined=sum(r.num_quarantined for r in results),
        planned_items=plan.num_rows,
    )


@task(name="preview", cache_policy=NO_CACHE, persist_result=False)
def preview_step(request: AugmentRequest, plan: Plan, results: list[ShardResult]) -> str | None:
    storage = Storage(request.output)
    key = RunLayout(request.request_hash).preview(plan.version)
    files = [r.data_file for r in results if r.data_file and r.num_rows]
    return build_preview(storage, files, key, request.operation.kind)


@task(name="register", cache_policy=NO_CACHE, persist_result=False)
def register_step(
    request: AugmentRequest, plan: Plan, results: list[ShardResult], report: QualityReport
) -> RegisterOutcome:
    progress.phase("registering")
    storage = Storage(request.output)
    entry = build_entry(storage, request, plan.version, results, report.summary())
    return register_version(storage, entry)
