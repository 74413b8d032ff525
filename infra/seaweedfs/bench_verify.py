"""What checking committed shards against their markers costs, vs reading every file to hash it.

    eval "$(infra/seaweedfs/run.sh env)" && infra/seaweedfs/run.sh start
    .venv/bin/python infra/seaweedfs/bench_verify.py --shards 64 --mb 4 --repeat 5
    .venv/bin/python infra/seaweedfs/bench_verify.py --root /tmp/verify --shards 64 --mb 4

Commits ``--shards`` shards of about ``--mb`` MB (incompressible bytes, like PNG cells) under the
root, then times, interleaved ``--repeat`` times: ``check`` = what a re-run or refresh does before
reusing them (:func:`augflow.tasks.commits.committed_results`: listings, one GET per marker, and
on S3 no object read while ETags match; locally every file is hashed), and ``read-all`` = a
sha256 of every data file (what a digest check costs when the store's ETags cannot be used).
Prints the median and min-max seconds and, on S3, the requests each made by operation.
Excludes writing the shards; includes Python's sha256 and the network/disk reads.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
import uuid
from collections import Counter
from collections.abc import Callable
from typing import Any

from augflow.tasks.commits import ShardFiles, commit_shard, committed_results
from augflow.tasks.layout import RunLayout
from augflow.tasks.storage import Storage


def _count_requests(storage: Storage) -> Counter[str]:
    """Counts S3 API calls by operation name (botocore's before-call event)."""
    calls: Counter[str] = Counter()
    if storage.is_local:
        return calls
    storage.fs.connect()

    def count(model: Any, **_: Any) -> None:
        calls[model.name] += 1

    storage.fs.s3.meta.events.register("before-call.s3.*", count)
    return calls


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--root", default=os.environ.get("AUGFLOW_BENCH_ROOT", "s3://augflow/bench"))
    ap.add_argument("--shards", type=int, default=64)
    ap.add_argument("--mb", type=float, default=4.0, help="data file size per shard, MB")
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()

    storage = Storage(f"{args.root.rstrip('/')}/{uuid.uuid4().hex[:8]}")
    layout = RunLayout(uuid.uuid4().hex * 2)
    ids = [f"s{i:05d}" for i in range(args.shards)]
    size = int(args.mb * 1e6)
    for sid in ids:
        data = os.urandom(size)
        commit_shard(storage, layout, ShardFiles(sid, data, None, 1, 0, "0" * 64))
    markers = {sid: layout.data_file(sid) for sid in ids}

    def check() -> None:
        assert len(committed_results(storage, layout, ids)) == len(ids)

    def read_all() -> None:
        for key in markers.values():
            storage.sha256(key)

    cases: dict[str, Callable[[], None]] = {"check": check, "read-all": read_all}
    times: dict[str, list[float]] = {name: [] for name in cases}
    calls = _count_requests(storage)
    per_case: dict[str, Counter[str]] = {}
    for _ in range(args.repeat):
        for name, fn in cases.items():  # interleaved: both see the same machine state
            before = Counter(calls)
            t = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t)
            per_case[name] = Counter(calls) - before
    total_mb = args.shards * size / 1e6
    print(f"{storage.root}: {args.shards} shards x {args.mb} MB = {total_mb:.0f} MB")
    for name, ts in times.items():
        reqs = ", ".join(f"{op} {n}" for op, n in sorted(per_case[name].items())) or "n/a (local)"
        print(
            f"{name:9s} median {statistics.median(ts):7.3f} s  (min {min(ts):.3f}, max "
            f"{max(ts):.3f}; {args.repeat} runs)  requests: {reqs}"
        )
    for sid in ids:
        storage.delete(layout.data_file(sid))
        storage.delete(layout.commit_marker(sid))


if __name__ == "__main__":
    main()
