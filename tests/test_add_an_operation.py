"""docs/architecture.md's worked example, run: a new operation (``grayscale``, in
tests/grayscale_plugin.py) added as a plugin and taken end to end — request, plan, Ray actors,
Parquet, the quality gate and the registry — with no change to augflow itself."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

TESTS = Path(__file__).resolve().parent


def _body(model: Path, inputs: Path, out: Path) -> dict:
    return {
        "dataset": "grey-photos",
        "operation": {"kind": "grayscale", "gain": 1.0},
        "inputs": str(inputs),
        "output": str(out),
        "model": {"id": str(model)},
        "shard_size": 2,
        # one crop of photos_dir is a nearly flat patch of sky once grey: not blank for this test
        "quality": {
            "min_faithfulness_psnr": 40.0,
            "max_quarantine_fraction": 0.5,
            "min_pixel_std": 0.1,
        },
    }


def test_an_unregistered_kind_is_refused_and_a_registered_one_plans(tmp_path: Path) -> None:
    from augflow.schemas import RequestError, parse_request
    from augflow.schemas import request as request_schema
    from augflow.schemas.records import variants_per_source

    body = _body(tmp_path / "m", tmp_path / "in", tmp_path / "out")
    import grayscale_plugin

    if "grayscale" not in request_schema.OPERATION_KINDS:  # not yet registered in this session
        with pytest.raises(RequestError) as err:
            parse_request(body)
        assert err.value.field == "operation.kind" and "img2img" in str(err.value)
    grayscale_plugin.register()
    grayscale_plugin.register()  # idempotent
    req = parse_request(body)
    assert isinstance(req.operation, grayscale_plugin.GrayscaleOp)
    assert variants_per_source(req) == 1 and req.operation.output_size((8, 8), (5, 3)) == (5, 3)
    other = parse_request({**body, "operation": {"kind": "grayscale", "gain": 2.0}})
    assert other.request_hash != req.request_hash  # its fields are part of the hash
    with pytest.raises(RequestError) as err:
        parse_request({**body, "operation": {"kind": "grayscale", "gain": 9}})
    assert err.value.field == "operation.gain"


@pytest.mark.slow
def test_a_plugin_operation_runs_end_to_end(
    tmp_path: Path, photos_dir: Path, prefect_server: str
) -> None:
    import grayscale_plugin

    model = tmp_path / "grayscale-model"
    grayscale_plugin.GrayscalePipeline().save_pretrained(model)
    out = tmp_path / "out"
    request_file = tmp_path / "request.json"
    request_file.write_text(json.dumps(_body(model, photos_dir, out)))
    # A fresh process, as a user's would be: it registers the plugin, starts Ray with the same
    # registration in every worker, and runs the unchanged augment flow.
    script = textwrap.dedent(
        f"""
        import json, sys
        import ray
        import grayscale_plugin
        grayscale_plugin.register()
        ray.init(
            _node_ip_address="127.0.0.1",
            include_dashboard=False,
            runtime_env={{
                "worker_process_setup_hook": "grayscale_plugin.register",
                "env_vars": {{"PYTHONPATH": {str(TESTS)!r}}},
            }},
        )
        from augflow.flows.augment import augment
        from augflow.schemas import parse_request
        outcome = augment(parse_request(json.load(open({str(request_file)!r}))))
        print(outcome.model_dump_json())
        """
    )
    env = {**os.environ, "PREFECT_API_URL": prefect_server, "PYTHONPATH": str(TESTS)}
    done = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-4000:]
    outcome = json.loads(done.stdout.strip().splitlines()[-1])
    assert outcome["status"] == "registered"
    # photos_dir: 5 photos and one corrupt file -> 5 rows and 1 quarantine row, nothing lost
    assert (outcome["num_rows"], outcome["num_quarantined"]) == (5, 1)

    from augflow.tasks.register import get_version
    from augflow.tasks.storage import Storage

    entry = get_version(Storage(str(out)), "grey-photos", outcome["version"])
    rows = [r for f in entry.files for r in pq.read_table(out / f.key).to_pylist()]
    assert {r["operation"] for r in rows} == {"grayscale"}
    for row in rows:
        img = np.asarray(Image.open(io.BytesIO(row["image"]["bytes"])))
        assert np.array_equal(img[..., 0], img[..., 1]) and np.array_equal(img[..., 1], img[..., 2])
        src = Image.open(photos_dir / row["source_id"])
        assert img.shape[:2] == (src.height, src.width)
        assert row["faithfulness_psnr"] >= 40.0  # the gate measured it against the luminance
