"""``augflow worker``'s Ray: long-lived, with warm actors. Each "flow run" here is a separate
driver process (as a Prefect worker's flow runs are) that connects through RAY_ADDRESS: the
second request of the same model is computed by the actor the first one started — same process,
one model load — and an actor leaves after its idle timeout or to make room for another model.

The Ray here is started by ``long_lived_ray`` in a private temp dir with its own token, and the
drivers never touch the test session's local Ray.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from augflow.flows.worker import enable_warm_actors, long_lived_ray

pytestmark = pytest.mark.slow

DRIVER = """
import json, sys, time
from augflow.schemas import parse_request
from augflow.tasks import execute
from augflow.tasks.plan import plan_request
from augflow.tasks.ray_pool import ensure_ray

request = parse_request(json.loads(open(sys.argv[1]).read()))
t0 = time.time()
ensure_ray()
results = execute.execute_plan(request, plan_request(request))
json.dump(
    {"t0": t0, "results": [r.model_dump(mode="json") for r in results],
     "pool": execute.last_pool_stats},
    open(sys.argv[2], "w"),
)
"""

WARM_NAMES = """
import json
from augflow.tasks import warm_pool
from augflow.tasks.ray_pool import ensure_ray
ensure_ray()
print(json.dumps(warm_pool.warm_actors()))
"""


def _drive(env: dict[str, str], body: dict, tmp: Path, name: str) -> dict:
    (tmp / f"{name}.json").write_text(json.dumps(body))
    out = tmp / f"{name}-out.json"
    proc = subprocess.run(
        [sys.executable, "-c", DRIVER, str(tmp / f"{name}.json"), str(out)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(out.read_text())


def _warm_names(env: dict[str, str]) -> list[str]:
    proc = subprocess.run(
        [sys.executable, "-c", WARM_NAMES], env=env, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_a_second_request_of_the_same_model_reuses_the_loaded_actor(
    tiny_model: Path, tmp_path: Path
) -> None:
    def body(dataset: str, n: int, **over: object) -> dict:
        b = {
            "dataset": dataset,
            "operation": {"kind": "generate", "num_images": n},
            "model": {"id": str(tiny_model)},
            "output": str(tmp_path / "out"),
            "steps": 2,
            "shard_size": 2,
            "execution": {"device": "cpu", "workers": 1},
        }
        b.update(over)
        return b

    with long_lived_ray(cpus=1) as env:
        enable_warm_actors(env, 120)
        first = _drive(env, body("first", 2), tmp_path, "a")
        second = _drive(env, body("second", 4, seed=7, compute={"micro_batch": 3}), tmp_path, "b")

        assert [r["status"] for r in first["results"]] == ["computed"]
        assert [r["status"] for r in second["results"]] == ["computed", "computed"]
        (a,), (b,) = first["pool"]["actors"], second["pool"]["actors"]
        assert first["pool"]["warm"] and second["pool"]["warm"]
        # the same process computed both requests, and loaded the model once
        assert b["pid"] == a["pid"] and b["ready_at"] == a["ready_at"]
        assert b["model_loads"] == 1 and b["requests"] == 2 and b["shards"] == 3
        # the model was loaded before the second driver even started
        assert b["ready_at"] < second["t0"]
        assert len(_warm_names(env)) == 1

        # another compute setting is another loaded pipeline: the idle actor makes room (1 CPU)
        enable_warm_actors(env, 3)  # and the new actor leaves 3 s after its last shard
        third = _drive(env, body("third", 2, compute={"channels_last": True}), tmp_path, "c")
        (c,) = third["pool"]["actors"]
        assert c["pid"] != a["pid"] and c["model_loads"] == 1
        deadline = time.monotonic() + 60
        while _warm_names(env) and time.monotonic() < deadline:
            time.sleep(1)
        assert _warm_names(env) == []
