"""The Ray fan-out on a real local Ray: results in plan order, committed shards skipped, failing
shards retried then reported, a model that cannot load stops the run at once."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest

from augflow.schemas import ExecutionError, ModelLoadError, RequestError, parse_request
from augflow.schemas.errors import StoragePermissionError
from augflow.schemas.records import ShardResult
from augflow.tasks.execute import execute_plan
from augflow.tasks.layout import RunLayout
from augflow.tasks.plan import plan_request

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("ray_local")]


def _request(model: Path | str, root: Path, **over: object):
    body: dict[str, object] = {
        "dataset": "exec",
        "operation": {"kind": "generate", "num_images": 5},
        "model": {"id": str(model)},
        "output": str(root),
        "steps": 2,
        "shard_size": 2,
        "execution": {"workers": 1, "device": "cpu", "max_retries": 1},
    }
    body.update(over)
    return parse_request(body)


def test_computes_every_shard_then_skips_them(tiny_model: Path, tmp_path: Path) -> None:
    request = _request(tiny_model, tmp_path)
    plan = plan_request(request)
    seen: list[ShardResult] = []
    results = execute_plan(request, plan, on_result=seen.append)
    assert [r.shard_id for r in results] == [s.shard_id for s in plan.shards]  # plan order
    assert [r.num_rows for r in results] == [2, 2, 1]
    assert all(r.status == "computed" and r.node_id for r in results)
    assert sorted(r.shard_id for r in seen) == sorted(r.shard_id for r in results)
    layout = RunLayout(request.request_hash)
    assert all((tmp_path / layout.commit_marker(r.shard_id)).is_file() for r in results)

    seen.clear()
    again = execute_plan(request, plan, on_result=seen.append)
    assert [r.status for r in again] == ["skipped"] * 3
    assert [r.data_file for r in again] == [r.data_file for r in results]
    assert len(seen) == 3 and all(r.node_id == "" for r in again)


def test_shards_failing_every_retry_are_reported(tiny_model: Path, tmp_path: Path) -> None:
    request = _request(tiny_model, tmp_path, operation={"kind": "generate", "num_images": 2})
    plan = plan_request(request)
    # A file where the shards folder should be: every write of a data file fails.
    run = tmp_path / RunLayout(request.request_hash).run
    run.mkdir(parents=True)
    (run / "shards").write_text("in the way")
    with pytest.raises(ExecutionError) as err:
        execute_plan(request, plan)
    text = str(err.value)
    assert "1 of 1 shards failed after 1 retries" in text
    assert f"shard {plan.shards[0].shard_id}:" in text
    assert "re-run resumes" in text
    assert not (run / "commits").exists() or not any((run / "commits").iterdir())


def test_a_model_that_cannot_load_stops_the_run_at_once(tmp_path: Path) -> None:
    empty = tmp_path / "not-a-model"
    empty.mkdir()
    request = _request(
        empty, tmp_path / "out", execution={"workers": 1, "device": "cpu", "max_retries": 1}
    )
    start = time.monotonic()
    with pytest.raises(ModelLoadError, match=r"model_index\.json"):
        execute_plan(request, plan_request(request))
    assert time.monotonic() - start < 5  # preflight, before any actor starts


def test_a_model_refused_by_the_actor_is_not_retried(tmp_path: Path) -> None:
    # Preflight judges files only; a pipeline class nobody provides is refused when the actor
    # loads the model. That refusal reaches the driver intact and stops the run: with 5 retries
    # allowed, a retried refusal would end as an ExecutionError instead.
    model = tmp_path / "unknown-class"
    model.mkdir()
    (model / "model_index.json").write_text(json.dumps({"_class_name": "NoSuchPipeline"}))
    request = _request(
        model, tmp_path / "out", execution={"workers": 1, "device": "cpu", "max_retries": 5}
    )
    with pytest.raises(ModelLoadError, match="NoSuchPipeline"):
        execute_plan(request, plan_request(request))


def test_a_request_the_model_refuses_is_not_retried(tiny_model: Path, tmp_path: Path) -> None:
    # Only the loaded model knows its number of training timesteps: the actor refuses the request,
    # and retrying could not change that answer.
    request = _request(
        tiny_model, tmp_path, steps=400, execution={"workers": 1, "device": "cpu", "max_retries": 5}
    )
    with pytest.raises(RequestError, match="steps"):
        execute_plan(request, plan_request(request))


def test_a_refused_write_is_not_retried(tiny_model: Path, tmp_path: Path) -> None:
    # The root passes preflight's probe, but the shards folder refuses writes even to root
    # (immutable): every worker write gets EPERM. With 5 retries allowed, a retried refusal
    # would end as an ExecutionError after minutes; it must stop the run at the first one.
    request = _request(
        tiny_model, tmp_path, execution={"workers": 1, "device": "cpu", "max_retries": 5}
    )
    shards = tmp_path / RunLayout(request.request_hash).shards
    shards.mkdir(parents=True)
    if subprocess.run(["chattr", "+i", str(shards)], capture_output=True).returncode != 0:
        pytest.skip("chattr +i is not available on this filesystem")
    try:
        with pytest.raises(StoragePermissionError, match="permission denied"):
            execute_plan(request, plan_request(request))
        assert list(shards.iterdir()) == []
    finally:
        subprocess.run(["chattr", "-i", str(shards)], check=True)


def test_a_shard_over_its_timeout_is_killed_retried_then_reported(
    tiny_model: Path, tmp_path: Path
) -> None:
    request = _request(
        tiny_model,
        tmp_path,
        operation={"kind": "generate", "num_images": 8},
        shard_size=8,
        steps=100,  # seconds for this shard on CPU, far beyond the timeout below
        image_size=64,
        execution={"workers": 1, "device": "cpu", "max_retries": 1, "shard_timeout_s": 0.5},
    )
    plan = plan_request(request)
    start = time.monotonic()
    with pytest.raises(ExecutionError) as err:
        execute_plan(request, plan)
    text = str(err.value)
    assert "1 of 1 shards failed after 1 retries" in text
    assert "timed out: no result after 0.5s (execution.shard_timeout_s)" in text
    assert time.monotonic() - start < 120
    assert not (tmp_path / RunLayout(request.request_hash).commits).exists()
