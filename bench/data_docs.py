"""What GX Data Docs add to the quality gate: rendering the gate's summed GX result as a site and
uploading it (tasks/gx_docs.py), against the gate without them.

    python -m bench.data_docs [--rows 16 10000] [--repeats 7]

Per table size, interleaved repeats of (a) the gate as a run calls it (``validate_rows``, which now
ends with ``publish_data_docs``) and (b) ``publish_data_docs`` alone on the same rows and GX
result; prints the median and min-max of each and (a)-(b), the gate without Data Docs. Includes:
building a fresh ephemeral GX context, rendering the validation result with GX's page builder and
writing the site to a local root. Excludes: importing GX (once per process; the gate pays it
anyway, the first thing this prints) and reading shards (done once per gate, in (a) only).
"""

from __future__ import annotations

import argparse
import io
import os
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

import numpy as np
import pyarrow as pa
from PIL import Image

from bench.common import quiet_env


def _rows(n: int) -> pa.Table:
    from augflow.schemas import ROW_SCHEMA

    buf = io.BytesIO()
    Image.fromarray(np.full((8, 8, 3), 128, np.uint8)).save(buf, "PNG")
    png = buf.getvalue()
    rng = np.random.default_rng(0)
    cols: dict[str, Any] = {name: [None] * n for name in ROW_SCHEMA.names}
    cols.update(
        image=[{"bytes": png, "path": None}] * n,
        row_id=[f"{i:08x}" + "ab" * 12 for i in range(n)],
        dataset=["bench"] * n,
        request_hash=["h" * 64] * n,
        shard_id=["shard-0"] * n,
        source_id=[f"src/{i}.png" for i in range(n)],
        variant=[0] * n,
        seed=list(range(n)),
        operation=["img2img"] * n,
        model_id=["tiny"] * n,
        model_revision=["local"] * n,
        steps=[2] * n,
        params=["{}"] * n,
        width=[8] * n,
        height=[8] * n,
        expected_width=[8] * n,
        expected_height=[8] * n,
        decodable=[True] * n,
        pixel_mean=rng.uniform(50, 200, n).tolist(),
        pixel_std=rng.uniform(10, 80, n).tolist(),
        has_nan=[False] * n,
        is_blank=[False] * n,
        faithfulness_psnr=rng.uniform(25, 40, n).tolist(),
        status=["ok"] * n,
    )
    return pa.table(cols, schema=ROW_SCHEMA)


def _stats(xs: list[float]) -> str:
    return f"median {statistics.median(xs):6.3f} s (min {min(xs):.3f}, max {max(xs):.3f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[16, 10_000])
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    quiet_env()

    cold = subprocess.run(
        [sys.executable, "-c", "import time; t = time.perf_counter(); "
         "import great_expectations; print(time.perf_counter() - t)"],
        capture_output=True, text=True, check=True, env={**os.environ, "GX_ANALYTICS_ENABLED": "false"},
    )  # fmt: skip
    print(f"import great_expectations (fresh process, paid by the gate anyway): "
          f"{float(cold.stdout):.2f} s")  # fmt: skip

    from augflow.schemas import parse_request
    from augflow.tasks.gx_docs import publish_data_docs
    from augflow.tasks.layout import RunLayout
    from augflow.tasks.storage import Storage
    from augflow.tasks.validate import validate_rows

    request = parse_request(
        {
            "dataset": "bench",
            "operation": {"kind": "img2img", "variants": 1},
            "inputs": "/in",
            "model": {"id": "tiny"},
            # made-up rows: only the GX suite is measured here, not issue 11's effect/set checks
            "quality": {"min_faithfulness_psnr": 20.0, "effect_checks": False, "set_checks": False},
        }
    )
    layout = RunLayout(request.request_hash)
    with tempfile.TemporaryDirectory() as root:
        storage = Storage(root)
        for n in args.rows:
            key = f"{layout.run}/shards/00000.parquet"
            table = _rows(n)
            storage.write_parquet(key, table)
            validate_rows(storage, request, "v1", [key], n, 0, n)  # warm-up: GX import, caches
            gx_result = storage.read_json(layout.quality_json("v1"))["great_expectations"]
            gate, docs = [], []
            for _ in range(args.repeats):
                t = time.perf_counter()
                report = validate_rows(storage, request, "v1", [key], n, 0, n)
                gate.append(time.perf_counter() - t)
                t = time.perf_counter()
                assert publish_data_docs(storage, request, "v1", gx_result) is not None
                docs.append(time.perf_counter() - t)
            assert report.passed, report.failed
            without = [g - d for g, d in zip(gate, docs, strict=True)]
            print(f"{n:>7} rows  gate with Data Docs  {_stats(gate)}")
            print(f"{n:>7} rows  Data Docs alone      {_stats(docs)}")
            print(f"{n:>7} rows  gate without (a-b)   {_stats(without)}")


if __name__ == "__main__":
    main()
