"""Parquet shard write throughput through augflow's Storage vs a plain s3fs put of the same bytes.

    eval "$(infra/seaweedfs/run.sh env)" && infra/seaweedfs/run.sh start
    .venv/bin/python infra/seaweedfs/bench_write.py --mb 64 --repeat 3

Rows are PNG-like (incompressible) image cells, as in a real shard. "parquet" times encoding plus
upload (what a worker pays per shard); "put" uploads the already-encoded bytes with s3fs.
"""

from __future__ import annotations

import argparse
import io
import os
import time
import uuid

import pyarrow as pa
import pyarrow.parquet as pq

from augflow.schemas.rows import ROW_SCHEMA
from augflow.tasks.storage import PUT_CHUNK, Storage, _codec_defaults


def _table(total_mb: int, cell_kb: int = 48) -> pa.Table:
    n = max(1, total_mb * 1024 // cell_kb)
    rows = [
        {"image": {"bytes": os.urandom(cell_kb * 1024), "path": f"{i}.png"}, "row_id": f"r{i}"}
        for i in range(n)
    ]
    return pa.Table.from_pylist(
        rows, schema=pa.schema([ROW_SCHEMA.field("image"), ROW_SCHEMA.field("row_id")])
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--root", default=os.environ.get("AUGFLOW_BENCH_ROOT", "s3://augflow/bench"))
    ap.add_argument("--mb", type=int, default=64, help="approximate shard size in MB")
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()

    storage = Storage(f"{args.root}/{uuid.uuid4().hex[:8]}")
    table = _table(args.mb)
    buf = io.BytesIO()
    # The same encoding Storage.write_parquet uses, so both rows move identical bytes.
    pq.write_table(table, buf, row_group_size=256, **_codec_defaults(table.schema))
    size_mb = len(buf.getvalue()) / 1e6

    best_parquet = best_put = float("inf")
    for i in range(args.repeat):
        t = time.perf_counter()
        storage.write_parquet(f"parquet-{i}.parquet", table, row_group_size=256)
        best_parquet = min(best_parquet, time.perf_counter() - t)
        data = buf.getvalue()
        t = time.perf_counter()
        storage.fs.pipe_file(storage.path(f"put-{i}.bin"), data, chunksize=PUT_CHUNK)
        best_put = min(best_put, time.perf_counter() - t)
    for i in range(args.repeat):
        storage.delete(f"parquet-{i}.parquet")
        storage.delete(f"put-{i}.bin")
    print(f"file size: {size_mb:.1f} MB ({table.num_rows} rows), best of {args.repeat}")
    print(f"parquet write (encode + upload): {size_mb / best_parquet:.1f} MB/s")
    print(f"plain s3fs put of the same bytes: {size_mb / best_put:.1f} MB/s")


if __name__ == "__main__":
    main()
