"""How long `augflow plan` takes and how much memory it peaks at, for big requests.

Runs the real CLI (`augflow plan REQUEST --json`) in a fresh process per measurement and reads that
process's own peak RSS and wall time from os.wait4, so interpreter start and imports are included
and nothing of this script is. Cases are interleaved over the repeats; prints median and min-max.

    .venv/bin/python bench/plan_scale.py [--repeats 3] [--files 100000]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

AUGFLOW = [sys.executable, "-m", "augflow.flows.cli"]


def _generate(num: int, shard: int) -> dict:
    return {
        "dataset": "scale",
        "operation": {"kind": "generate", "num_images": num},
        "model": {"id": "org/model"},
        "shard_size": shard,
    }


def _one(request: Path) -> None:
    """Child mode: run the CLI once and print seconds, peak RSS (MiB), exit code, counts."""
    start = time.perf_counter()
    proc = subprocess.Popen(
        [*AUGFLOW, "plan", str(request), "--json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    out = proc.stdout.read() if proc.stdout else b""
    err = proc.stderr.read() if proc.stderr else b""
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - start
    code = os.waitstatus_to_exitcode(status)
    info: dict = {}
    if code == 0:
        s = json.loads(out)
        info = {"images": s["images"], "shards": s["shards"]}
    else:
        info = {"stderr": err.decode(errors="replace").strip().splitlines()[-1][:160]}
    print(json.dumps({"s": seconds, "rss_mib": usage.ru_maxrss / 1024, "code": code, **info}))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--files", type=int, default=100_000, help="image files for the folder case")
    ap.add_argument("--one", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        _one(args.one)
        return
    tmp = Path(tempfile.mkdtemp(prefix="plan-scale-"))
    folder = tmp / "inputs"
    folder.mkdir()
    for i in range(args.files):
        (folder / f"{i:08d}.png").write_bytes(b"")  # listing reads names and sizes only
    cases = {
        "generate 1e8 images, shard_size 1000 (1e5 shards, the maximum)": _generate(10**8, 1000),
        "generate 1e8 images, shard_size 100000 (1e3 shards)": _generate(10**8, 100_000),
        "generate 1e8 images, shard_size 1 (1e8 shards: refused)": _generate(10**8, 1),
        f"denoise a folder of {args.files} files, shard_size 64": {
            "dataset": "scale",
            "operation": {"kind": "denoise"},
            "inputs": str(folder),
            "model": {"id": "org/model"},
            "output": str(tmp / "out"),
            "shard_size": 64,
        },
    }
    files = {}
    for i, (name, body) in enumerate(cases.items()):
        files[name] = tmp / f"case{i}.yaml"
        files[name].write_text(yaml.safe_dump(body))
    results: dict[str, list[dict]] = {name: [] for name in cases}
    try:
        for _ in range(args.repeats):
            for name, path in files.items():  # interleaved
                proc = subprocess.run(
                    [sys.executable, __file__, "--one", str(path)], capture_output=True, text=True
                )
                results[name].append(json.loads(proc.stdout))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"augflow plan --json, {args.repeats} runs each (interleaved); whole process:")
    for name, runs in results.items():
        secs = [r["s"] for r in runs]
        rss = [r["rss_mib"] for r in runs]
        extra = {k: v for k, v in runs[-1].items() if k not in ("s", "rss_mib")}
        print(
            f"- {name}: {statistics.median(secs):.2f} s ({min(secs):.2f}-{max(secs):.2f}), "
            f"peak RSS {statistics.median(rss):.0f} MiB ({min(rss):.0f}-{max(rss):.0f}); {extra}"
        )


if __name__ == "__main__":
    main()
