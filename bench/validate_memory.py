"""Peak memory of the quality gate as a version grows: does the streaming gate stay flat?

    python -m bench.validate_memory [--sizes 1000,100000,1000000] [--shard-rows 1000]
                                    [--repeats 3] [--no-whole-frame] [--batch-rows N]

Per size, a synthetic committed ``generate`` version is written under a temporary root the way a
run leaves it: shards named by the plan's ``ShardRanges``, each a real Parquet file with the row
schema (metric columns of plausible values, every image the same tiny PNG) committed through
``commits.commit_shard`` (file, then marker). Then ``validate_rows`` runs on it in a fresh Python
process per (size, mode, repeat), interleaved, and that process reports its own peak RSS
(``resource.getrusage(RUSAGE_SELF).ru_maxrss``) right after its imports and at its end.

Modes: ``streaming`` is the gate as a run calls it (GX batches of at most ``BATCH_ROWS`` rows);
``whole-frame`` emulates the gate before streaming by passing ``batch_rows`` >= the row count, so
GX validates one frame of every row at once. The old gate held that frame through a second GX
pass (the Data Docs Checkpoint) too, so its real peak was at least the ``whole-frame`` one.

What the numbers include: the whole child process (the Python interpreter, the imports of augflow,
Great Expectations, pandas, pyarrow and numpy, a GX ephemeral context, reading the metric columns
of every shard file, the GX validation, the row_id digests, writing the JSON/Markdown report and
rendering and writing the Data Docs site to a local root). ``after imports`` is the fixed import
cost; ``gate`` is peak minus that. Excluded: writing the synthetic version (the parent process),
the issue-11 effect and set checks (``quality: {effect_checks: false, set_checks: false}``: they
stream on their own and are measured elsewhere), the proxy check (off), Prefect and Ray (not
involved), and S3 (a local root). Wall time is the ``validate_rows`` call alone, in the child.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from bench.common import quiet_env

MODES = ("streaming", "whole-frame")
_FILES = "files.json"


def _request(n: int, shard_rows: int) -> Any:
    from augflow.schemas import parse_request

    return parse_request(
        {
            "dataset": "bench-memory",
            "operation": {"kind": "generate", "num_images": n},
            "model": {"id": "tiny"},
            "shard_size": shard_rows,
            # synthetic rows: the effect and set checks would refuse them; measured elsewhere
            "quality": {"effect_checks": False, "set_checks": False},
        }
    )


def _png() -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.full((8, 8, 3), 128, np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def _shard_table(request_hash: str, shard_id: str, first: int, count: int, png: bytes) -> pa.Table:
    from augflow.schemas import ROW_SCHEMA
    from augflow.schemas.records import derive_id

    rng = np.random.default_rng(first)
    idx = range(first, first + count)
    sources = [f"generate/{i:08d}" for i in idx]
    cols: dict[str, pa.Array] = {
        "image": pa.array([{"bytes": png, "path": None}] * count, ROW_SCHEMA.field("image").type),
        "row_id": pa.array([derive_id(request_hash, s, 0) for s in sources]),
        "dataset": pa.array(["bench-memory"] * count),
        "request_hash": pa.array([request_hash] * count),
        "shard_id": pa.array([shard_id] * count),
        "source_id": pa.array(sources),
        "variant": pa.array(np.zeros(count, np.int32)),
        "seed": pa.array(np.arange(first, first + count, dtype=np.int64)),
        "operation": pa.array(["generate"] * count),
        "model_id": pa.array(["tiny"] * count),
        "status": pa.array(["ok"] * count),
        "width": pa.array(np.full(count, 8, np.int32)),
        "height": pa.array(np.full(count, 8, np.int32)),
        "expected_width": pa.array(np.full(count, 8, np.int32)),
        "expected_height": pa.array(np.full(count, 8, np.int32)),
        "decodable": pa.array(np.ones(count, bool)),
        "has_nan": pa.array(np.zeros(count, bool)),
        "is_blank": pa.array(np.zeros(count, bool)),
        "pixel_mean": pa.array(rng.uniform(50, 200, count).astype(np.float32)),
        "pixel_std": pa.array(rng.uniform(10, 80, count).astype(np.float32)),
    }
    arrays = [
        cols[f.name].cast(f.type) if f.name in cols else pa.nulls(count, f.type) for f in ROW_SCHEMA
    ]
    return pa.Table.from_arrays(arrays, schema=ROW_SCHEMA)


def write_version(root: Path, n: int, shard_rows: int) -> list[str]:
    """A committed version of ``n`` rows under ``root``; returns its data files (plan order)."""
    import hashlib

    from augflow.schemas.records import ShardRanges
    from augflow.tasks.commits import ShardFiles, commit_shard
    from augflow.tasks.layout import RunLayout
    from augflow.tasks.storage import Storage, parquet_bytes

    request = _request(n, shard_rows)
    storage = Storage(str(root))
    layout = RunLayout(request.request_hash)
    png = _png()
    files = []
    for spec in ShardRanges(request.request_hash, n, shard_rows):
        table = _shard_table(request.request_hash, spec.shard_id, spec.first, spec.count, png)
        ids = table.column("row_id").to_pylist()
        marker = commit_shard(
            storage,
            layout,
            ShardFiles(
                shard_id=spec.shard_id,
                data=parquet_bytes(table),
                quarantine=None,
                num_rows=table.num_rows,
                num_quarantined=0,
                row_ids_sha256=hashlib.sha256("".join(ids).encode()).hexdigest(),
            ),
        )
        assert marker.data_file is not None
        files.append(marker.data_file)
    (root / _FILES).write_text(json.dumps({"rows": n, "shard_rows": shard_rows, "files": files}))
    return files


def _rss_mb() -> float:
    # Linux reports ru_maxrss in KiB
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def child(root: Path, mode: str, batch_rows: int | None) -> None:
    """One gate run in this (fresh) process; prints one JSON line."""
    t = time.perf_counter()
    from augflow.tasks import validate
    from augflow.tasks.layout import RunLayout
    from augflow.tasks.storage import Storage

    validate._import_gx()  # the gate imports GX lazily; its import is part of the fixed cost
    import_s = time.perf_counter() - t
    after_imports = _rss_mb()

    spec = json.loads((root / _FILES).read_text())
    n, files = spec["rows"], spec["files"]
    request = _request(n, spec["shard_rows"])
    storage = Storage(str(root))
    if mode == "whole-frame":
        batch_rows = max(n, 1)
    batch_rows = batch_rows or validate.BATCH_ROWS
    t = time.perf_counter()
    report = validate.validate_rows(storage, request, "v1", files, n, 0, n, batch_rows=batch_rows)
    wall = time.perf_counter() - t
    peak = _rss_mb()
    gx = storage.read_json(RunLayout(request.request_hash).quality_json("v1"))
    out = {
        "rows": n,
        "mode": mode,
        "passed": report.passed,
        "failed": report.failed,
        "batches": gx["great_expectations"]["meta"]["augflow_batches"],
        "import_s": import_s,
        "after_imports_mb": after_imports,
        "peak_mb": peak,
        "wall_s": wall,
    }
    print(json.dumps(out))


def _run_child(root: Path, mode: str, batch_rows: int | None) -> dict[str, Any]:
    extra = ["--batch-rows", str(batch_rows)] if batch_rows else []
    proc = subprocess.run(
        [sys.executable, "-m", "bench.validate_memory", "--child", str(root), mode, *extra],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])},
    )
    if proc.returncode != 0:
        raise RuntimeError(f"the gate's child process failed:\n{proc.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    if not result["passed"]:
        raise RuntimeError(f"the synthetic version failed the gate: {result['failed']}")
    return result


def _cell(xs: list[float], fmt: str) -> str:
    med = format(statistics.median(xs), fmt)
    if len(xs) == 1:
        return med
    return f"{med} ({format(min(xs), fmt)}-{format(max(xs), fmt)})"


def table(results: list[dict[str, Any]]) -> list[str]:
    """The Markdown table of ``results`` (one row per size and mode: median, and min-max over
    repeats when there are several)."""
    lines = [
        "| rows | mode | GX batches | peak RSS MB | after imports MB | gate MB (peak - imports) "
        "| gate vs smallest | wall s |",
        "|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    keys = sorted(
        {(r["rows"], r["mode"]) for r in results}, key=lambda k: (MODES.index(k[1]), k[0])
    )
    base: dict[str, float] = {}
    for rows, mode in keys:
        runs = [r for r in results if (r["rows"], r["mode"]) == (rows, mode)]
        gate = [r["peak_mb"] - r["after_imports_mb"] for r in runs]
        base.setdefault(mode, statistics.median(gate))
        ratio = statistics.median(gate) / base[mode] if base[mode] > 0 else float("nan")
        lines.append(
            f"| {rows:,} | {mode} | {runs[0]['batches']} "
            f"| {_cell([r['peak_mb'] for r in runs], '.0f')} "
            f"| {_cell([r['after_imports_mb'] for r in runs], '.0f')} "
            f"| {_cell(gate, '.0f')} | {ratio:.2f}x "
            f"| {_cell([r['wall_s'] for r in runs], '.1f')} |"
        )
    return lines


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1000,100000,1000000", help="comma-separated rows")
    parser.add_argument("--shard-rows", type=int, default=1000, help="rows per shard file")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-whole-frame", action="store_true", help="streaming only")
    parser.add_argument(
        "--batch-rows", type=int, default=None, help="streaming batch size (default: the gate's)"
    )
    parser.add_argument("--child", nargs=2, metavar=("ROOT", "MODE"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    quiet_env()
    if args.child:
        child(Path(args.child[0]), args.child[1], args.batch_rows)
        return []
    sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    modes = MODES[:1] if args.no_whole_frame else MODES
    print(__doc__.strip(), end="\n\n")
    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="augflow-validate-memory-") as tmp:
        roots = {}
        for n in sizes:
            roots[n] = Path(tmp) / f"v{n}"
            t = time.perf_counter()
            files = write_version(roots[n], n, args.shard_rows)
            print(
                f"wrote {n:,} rows in {len(files)} shard files in {time.perf_counter() - t:.1f} s",
                flush=True,
            )
        for _ in range(args.repeats):  # interleaved: a slow moment of the machine hits all
            for n in sizes:
                for mode in modes:
                    results.append(_run_child(roots[n], mode, args.batch_rows))
                    r = results[-1]
                    print(
                        f"  {n:>9,} rows {mode:<11} peak {r['peak_mb']:.0f} MB "
                        f"(after imports {r['after_imports_mb']:.0f}) {r['wall_s']:.1f} s",
                        flush=True,
                    )
    print()
    print("\n".join(table(results)))
    return results


if __name__ == "__main__":
    main()
