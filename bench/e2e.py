"""End to end, as the person waiting sees it: each arm is one fresh process, timed by us from
before it is started until it has exited, arms interleaved (a, b, c, a, b, c, ...).

Arms (the same job: ``generate`` N images with the bundled ``ddim-faces32``, 5 DDIM steps, one
seeded generator per image, PNGs into Parquet):

- ``bare``: :mod:`bench.bare_loop`, with the threads and batch size that ran fastest in a short
  sweep on this machine just before (the best-tuned bare loop);
- ``augflow``: ``augflow run REQUEST.yaml`` (through :mod:`bench.timed_run`) with the default
  configuration: the request names only the dataset, the operation, the model and the steps;
- ``raydata``: :mod:`bench.raydata_peer` with augflow's default CPU allotment (all cores, one
  thread per actor, the same micro-batch).

Per run: ``wall_s`` (our clock, process start to exit), ``result_s`` (process start to the
Parquet written / the version registered), ``first_image_s`` (process start to the first
micro-batch off the model) and ``steady_images_per_s`` (images completed after the first unit ÷
time from the first to the last completion; units are batches for bare and Ray Data, shards for
augflow).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench.common import steady_rate

ROOT = Path(__file__).resolve().parent.parent
BUNDLED = ROOT / "models" / "bundled" / "ddim-faces32"


def run_timed(cmd: list[str], env: dict[str, str], log: Path, timeline: Path) -> dict[str, Any]:
    """Run ``cmd`` to completion; its timeline plus the wall time we measured around it."""
    t0 = time.time()
    with log.open("w") as fh:
        # output to a file, not a pipe: a server the process starts must not hold our pipe open
        code = subprocess.call(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
    wall = time.time() - t0
    if code != 0 or not timeline.exists():
        sys.stderr.write(log.read_text()[-6000:])
        raise SystemExit(f"benchmark run failed (exit {code}); log: {log}")
    out: dict[str, Any] = json.loads(timeline.read_text())
    out["wall_s"] = wall
    out["launched_at"] = t0
    timeline.write_text(json.dumps(out))  # the files alone can be scored again
    return out


def bare(n: int, p: dict[str, Any], work: Path, env: dict[str, str], tag: str) -> dict[str, Any]:
    tl, log = work / f"{tag}.json", work / f"{tag}.log"
    cmd = [sys.executable, "-m", "bench.bare_loop", str(tl), "--model", str(p["model"])]
    cmd += ["--n", str(n), "--steps", str(p["steps"]), "--batch", str(p["bare_batch"])]
    cmd += ["--threads", str(p["bare_threads"]), "--out", str(work / tag)]
    return score_bare(run_timed(cmd, env, log, tl), n, p)


def score_bare(r: dict[str, Any], n: int, p: dict[str, Any]) -> dict[str, Any]:
    return _summary(r, r["first_batch_at"], r["done_at"], r["events"], n)


def augflow(n: int, p: dict[str, Any], work: Path, env: dict[str, str], tag: str) -> dict[str, Any]:
    tl, log = work / f"{tag}.json", work / f"{tag}.log"
    req = work / f"{tag}.yaml"
    # the default configuration: nothing but what the job is
    req.write_text(
        json.dumps(
            {
                "dataset": "e2e",
                "operation": {"kind": "generate", "num_images": n},
                "model": {"id": str(p["model"])},
                "steps": p["steps"],
            }
        )
    )
    cmd = [sys.executable, "-m", "bench.timed_run", str(tl), "run", str(req)]
    cmd += ["--output", str(work / tag)]
    return score_augflow(run_timed(cmd, env, log, tl), n, p)


def score_augflow(r: dict[str, Any], n: int, p: dict[str, Any]) -> dict[str, Any]:
    actors = (r.get("pool") or {}).get("actors") or []
    first = min((a["first_batch_at"] for a in actors if a.get("first_batch_at")), default=None)
    events = [(t, k) for t, k, _ in r["events"]]
    out = _summary(r, first, r["cli_returned_at"], events, n, max(1, len(actors)))
    out["actors"] = len(actors)
    out["actor_ready_s"] = [
        round(a["ready_at"] - r["process_start"], 2) for a in actors if a.get("ready_at")
    ]
    return out


def raydata(n: int, p: dict[str, Any], work: Path, env: dict[str, str], tag: str) -> dict[str, Any]:
    tl, log = work / f"{tag}.json", work / f"{tag}.log"
    cmd = [sys.executable, "-m", "bench.raydata_peer", str(tl), "--model", str(p["model"])]
    cmd += ["--n", str(n), "--steps", str(p["steps"]), "--batch", str(p["peer_batch"])]
    cmd += ["--actors", str(p["peer_actors"]), "--threads", str(p["peer_threads"])]
    cmd += ["--out", str(work / tag)]
    return score_raydata(run_timed(cmd, env, log, tl), n, p)


def score_raydata(r: dict[str, Any], n: int, p: dict[str, Any]) -> dict[str, Any]:
    return _summary(r, r["first_batch_at"], r["done_at"], r["events"], n, p["peer_actors"])


ARMS = {"bare": bare, "augflow": augflow, "raydata": raydata}
#: An arm's numbers from its timeline file (``run_timed`` keeps our wall clock in it).
SCORES = {"bare": score_bare, "augflow": score_augflow, "raydata": score_raydata}


def _summary(
    r: dict[str, Any],
    first: float | None,
    result: float,
    events: list[Any],
    n: int,
    parallel: int = 1,
) -> dict[str, Any]:
    """``parallel``: workers completing units side by side (actors), for the steady rate."""
    start = r["process_start"]
    return {
        "wall_s": r["wall_s"],
        "result_s": result - start,
        "first_image_s": None if first is None else first - start,
        "steady_images_per_s": steady_rate([(t, k) for t, k in events], parallel),
        "images": n,
        "units": len(events),
    }


def tune_bare(p: dict[str, Any], work: Path, env: dict[str, str]) -> dict[str, Any]:
    """The fastest steady state of the bare loop over ``threads`` x ``batch`` on a short job."""
    t = p["tune"]
    trials = []
    for threads in t["threads"]:
        for batch in t["batch"]:
            tag = f"tune-t{threads}-b{batch}"
            r = bare(t["n"], {**p, "bare_threads": threads, "bare_batch": batch}, work, env, tag)
            trials.append({"threads": threads, "batch": batch, **r})
    best = max(trials, key=lambda x: x["steady_images_per_s"] or 0.0)
    return {"trials": trials, "threads": best["threads"], "batch": best["batch"]}
