"""Run every benchmark and write ``bench.json`` + ``bench.md``:

    .venv/bin/python -m bench.run --out bench/results            # the numbers (about an hour here)
    .venv/bin/python -m bench.run --out /tmp/b --smoke           # plumbing check, ~5 min
    .venv/bin/python -m bench.run --out bench/results --only e2e overlap
    .venv/bin/python -m bench.run --out bench/results --only e2e --e2e-sizes 2048 --merge
    .venv/bin/python -m bench.run --out bench/results --s3 s3://bucket/prefix   # + storage on S3

Every ratio comes from interleaved repeats (arms alternate: a, b, c, a, b, c, ...; at least three
runs per arm) and is reported as the median with the min-max over the repeats, where a ratio's
repeat pairs the runs of the same round. What each number includes: docs/benchmarks.md.
GPU: bench/gpu_bench.py (runs only where a GPU is available; --smoke runs on CPU in CI).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import e2e
from bench.common import make_unet_model, quiet_env

FULL: dict[str, Any] = {
    "e2e": {
        "sizes": [16, 256, 2048],
        "steps": 5,
        "repeats": 3,
        "arms": ["bare", "augflow", "raydata"],
        "tune": {"n": 64, "threads": [1, 2], "batch": [8, 16, 32]},
    },
    "warm": {"n": 16, "steps": 5, "requests": 4, "idle_timeout": 600},
    "overlap": {
        "seconds": 0.04,
        "batch": 8,
        "side": 512,
        # 64 batches, 16 shards: long enough that an encoder slower than the device shows (a
        # backlog of 2 shards in flight hides it over 16 batches)
        "n": 512,
        "shard_size": 32,
        "encode_threads": [0, 1, 2],
        "repeats": 3,
        "steps": 1,
    },
    "scaling": {
        "sizes": [1, 2, 4, 8, 16],
        "sleep": 0.5,
        "batch": 4,
        "shard_size": 8,
        "shards_per_actor": 6,
        "ray_cpus": 16,
    },
    "overhead": {"shard_counts": [1000, 10000], "workers": 2, "batch": 1, "ray_cpus": 2},
    "memory": {
        "sizes": [2048, 100000],
        "shard_size": 1024,
        "batch": 64,
        "side": 8,
        "workers": 2,
        "ray_cpus": 2,
    },
    "storage": {"n": 16, "batch": 4, "shard_size": 8, "steps": 20, "threads": 1},
}
SMOKE: dict[str, Any] = {
    "e2e": {
        "sizes": [4],
        "steps": 1,
        "repeats": 1,
        "arms": ["bare", "augflow", "raydata"],
        "tune": {"n": 4, "threads": [1], "batch": [4]},
    },
    "warm": {"n": 2, "steps": 1, "requests": 2, "idle_timeout": 600},  # > a busy box's gap
    "overlap": {
        "seconds": 0.01,
        "batch": 2,
        "side": 32,
        "n": 8,
        "shard_size": 4,
        "encode_threads": [0, 1],
        "repeats": 1,
        "steps": 1,
    },
    "scaling": {
        "sizes": [1, 2],
        "sleep": 0.05,
        "batch": 2,
        "shard_size": 2,
        "shards_per_actor": 3,
        "ray_cpus": 2,
    },
    "overhead": {"shard_counts": [20], "workers": 1, "batch": 1, "ray_cpus": 1},
    "memory": {
        "sizes": [8, 16],
        "shard_size": 4,
        "batch": 4,
        "side": 8,
        "workers": 1,
        "ray_cpus": 1,
    },
    "storage": {"n": 4, "batch": 2, "shard_size": 2, "steps": 2, "threads": 1},
}
ALL = ("e2e", "warm", "overlap", "scaling", "overhead", "memory", "storage")


def run_case(case: str, params: dict[str, Any], env: dict[str, str]) -> dict[str, Any]:
    """Run one case of bench/cases.py in a fresh interpreter; its result plus the process's wall."""
    logs = Path(env["AUGFLOW_BENCH_LOGS"])
    n = len(list(logs.glob("*.log")))
    log, result_file = logs / f"{n:02d}-{case}.log", logs / f"{n:02d}-{case}.json"
    cmd = [sys.executable, "-m", "bench.cases", case]
    cmd.append(json.dumps({**params, "result_file": str(result_file)}))
    result = e2e.run_timed(cmd, env, log, result_file)
    result["total_wall_s"] = result.pop("wall_s")
    result.pop("launched_at", None)
    print(f"  {case}: {result['total_wall_s']:.1f} s", flush=True)
    return result


def _warm_prefect(env: dict[str, str]) -> None:
    code = (
        "from prefect.client.orchestration import get_client\n"
        "with get_client(sync_client=True) as c: c.hello()\n"
    )
    subprocess.run([sys.executable, "-c", code], env=env, check=True, stdout=subprocess.DEVNULL)


def machine() -> dict[str, Any]:
    import torch

    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_gb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    versions = {}
    for mod in ("torch", "diffusers", "ray", "prefect", "pyarrow"):
        try:
            versions[mod] = __import__(mod).__version__
        except Exception:
            versions[mod] = "?"
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gb": round(mem_gb, 1),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "versions": versions,
        "loadavg_start": os.getloadavg(),
        "niceness": os.getpriority(os.PRIO_PROCESS, 0),
    }


def spread(values: list[float | None]) -> dict[str, Any]:
    """Median with min and max (None values left out)."""
    v = [x for x in values if x is not None]
    if not v:
        return {"median": None, "min": None, "max": None, "n": 0}
    return {"median": statistics.median(v), "min": min(v), "max": max(v), "n": len(v)}


def _ratio(num: list[float | None], den: list[float | None]) -> dict[str, Any]:
    """Per-round ratios num[i] / den[i] (the two runs of one interleaved round)."""
    return spread([a / b if a and b else None for a, b in zip(num, den, strict=False)])


def e2e_section(
    cfg: dict[str, Any], work: Path, env: dict[str, str], tune: dict[str, Any] | None = None
) -> dict[str, Any]:
    """``tune``: a bare-loop sweep from an earlier run (--merge) to reuse, so every size of one
    bench.json compares against the same bare-loop settings."""
    import math

    model = e2e.BUNDLED
    out: dict[str, Any] = {"config": cfg, "model": str(model.relative_to(e2e.ROOT))}
    base = {"model": model, "steps": cfg["steps"]}
    if tune is None:
        print("  tuning the bare loop", flush=True)
        tune = e2e.tune_bare({**base, "tune": cfg["tune"]}, work, env)
    out["bare_tuning"] = tune
    params = {
        **base,
        "bare_threads": tune["threads"],
        "bare_batch": tune["batch"],
        # the peer gets augflow's default CPU allotment: every core, one thread per actor
        "peer_actors": os.cpu_count() or 1,
        "peer_threads": 1,
        "peer_batch": _augflow_cpu_batch(model),
    }
    out["params"] = {k: str(v) if isinstance(v, Path) else v for k, v in params.items()}
    for n in cfg["sizes"]:
        runs: dict[str, list[dict[str, Any]]] = {arm: [] for arm in cfg["arms"]}
        for rep in range(cfg["repeats"]):
            for arm in cfg["arms"]:
                tag = f"{arm}-{n}-{rep}"
                r = e2e.ARMS[arm](n, params, work, env, tag)
                runs[arm].append(r)
                print(
                    f"  {n} images {arm} #{rep + 1}: wall {r['wall_s']:.1f} s, first image "
                    f"{_num(r['first_image_s'])} s, steady {_num(r['steady_images_per_s'])}/s",
                    flush=True,
                )
        out[str(n)] = size_row(runs)
    out["_note"] = (
        "steady state needs 2+ units: at 16 images augflow has one shard"
        if any(math.ceil(n / 64) < 2 for n in cfg["sizes"])
        else ""
    )
    return out


def size_row(runs: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """One size's spreads and per-round ratios from its runs per arm (rounds in order)."""
    row: dict[str, Any] = {"runs": runs}
    for arm, rs in runs.items():
        row[arm] = {
            key: spread([r[key] for r in rs])
            for key in ("wall_s", "result_s", "first_image_s", "steady_images_per_s")
        }
    a, b = runs["bare"], runs["augflow"]
    row["ratios"] = {
        # end to end: a's time over b's (above 1: augflow finished first)
        "b_over_a_wall": _ratio([x["wall_s"] for x in a], [x["wall_s"] for x in b]),
        "b_over_a_result": _ratio([x["result_s"] for x in a], [x["result_s"] for x in b]),
        "b_wall_over_a_wall": _ratio([x["wall_s"] for x in b], [x["wall_s"] for x in a]),
        "b_over_a_steady": _ratio(
            [x["steady_images_per_s"] for x in b], [x["steady_images_per_s"] for x in a]
        ),
    }
    if "raydata" in runs:
        c = runs["raydata"]
        row["ratios"]["b_over_c_wall"] = _ratio([x["wall_s"] for x in c], [x["wall_s"] for x in b])
        row["ratios"]["b_over_c_steady"] = _ratio(
            [x["steady_images_per_s"] for x in b], [x["steady_images_per_s"] for x in c]
        )
    return row


def _augflow_cpu_batch(model: Path) -> int:
    """The micro-batch augflow's default picks for ``model`` on CPU (the peer uses the same)."""
    from augflow.models.speed import cpu_micro_batch

    unet = json.loads((model / "unet" / "config.json").read_text())
    side = unet["sample_size"]
    return cpu_micro_batch(side * side if isinstance(side, int) else side[0] * side[1])


def _merged(old: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    """``old`` with the sections (for e2e and memory: the sizes) measured in ``new`` replacing
    theirs; ``runs`` keeps each run's machine line (its load) and what it measured."""
    if old.get("smoke") != new["smoke"]:
        raise SystemExit("--merge: one of the old bench.json and this run is a smoke run")
    res = {**old, "config": {**old["config"]}, "gpu": new["gpu"], "machine": new["machine"]}
    runs = old.get("runs") or [{"machine": old["machine"], "sections": _measured(old)}]
    res["runs"] = [*runs, {"machine": new["machine"], "sections": _measured(new)}]
    for section in ALL:
        if section not in new:
            continue
        res["config"][section] = new["config"][section]
        if section in ("e2e", "memory") and section in old:
            res[section] = {**old[section], **new[section]}
            sizes = {*old["config"][section]["sizes"], *new["config"][section]["sizes"]}
            res["config"][section] = {**new["config"][section], "sizes": sorted(sizes)}
        else:
            res[section] = new[section]
    if "e2e" in res:
        res["e2e"]["config"] = res["config"]["e2e"]
    res["bench_wall_s"] = sum(r["machine"].get("bench_wall_s", 0) for r in res["runs"])
    return res


def _measured(r: dict[str, Any]) -> list[str]:
    out = []
    for section in ALL:
        if section in r:
            sizes = [k for k in r[section] if k.isdigit()] if section in ("e2e", "memory") else []
            out.append(f"{section} {' '.join(sizes)}".strip())
    return out


def _num(v: float | None) -> str:
    return "—" if v is None else f"{v:.2f}"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--out", default="bench/results")
    ap.add_argument("--smoke", action="store_true", help="tiny sizes: checks the plumbing only")
    ap.add_argument("--only", nargs="*", choices=ALL, default=list(ALL))
    ap.add_argument("--s3", default=None, help="also measure the storage share on this S3 root")
    ap.add_argument(
        "--e2e-sizes", nargs="+", type=int, help="end-to-end sizes instead of 16 256 2048"
    )
    ap.add_argument("--memory-sizes", nargs="+", type=int, help="memory sizes (rows)")
    ap.add_argument(
        "--merge",
        action="store_true",
        help="add to OUT/bench.json instead of replacing it (sections and sizes measured now "
        "replace the same ones there; the rest is kept)",
    )
    args = ap.parse_args(argv)
    quiet_env()
    cfg = json.loads(json.dumps(SMOKE if args.smoke else FULL))  # a copy: the options edit it
    if args.e2e_sizes:
        cfg["e2e"]["sizes"] = args.e2e_sizes
    if args.memory_sizes:
        cfg["memory"]["sizes"] = args.memory_sizes
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="augflow-bench-"))
    env = {
        **os.environ,
        "PREFECT_HOME": str(work / "prefect-home"),
        "PYTHONUNBUFFERED": "1",
        "AUGFLOW_BENCH_LOGS": str(out / "logs"),
        "PYTHONPATH": os.pathsep.join(
            p for p in (str(e2e.ROOT), os.environ.get("PYTHONPATH")) if p
        ),
    }
    (out / "logs").mkdir(exist_ok=True)
    merge_into = args.merge and (out / "bench.json").exists()
    env.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    # A loaded box can take longer than Prefect's default 20 s to start its ephemeral server.
    env.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "300")
    # Create the Prefect database once, outside every timing: a person's second `augflow run`
    # finds it too.
    _warm_prefect(env)
    make_unet_model(work / "models" / "unet64")  # built once, outside every timing
    res: dict[str, Any] = {"machine": machine(), "smoke": args.smoke, "config": cfg}
    t_start = time.time()

    if "e2e" in args.only:
        print("end to end", flush=True)
        (work / "e2e").mkdir()
        old = json.loads((out / "bench.json").read_text()) if merge_into else {}
        tune = old.get("e2e", {}).get("bare_tuning") if old.get("smoke") == args.smoke else None
        res["e2e"] = e2e_section(cfg["e2e"], work / "e2e", env, tune)
    if "warm" in args.only:
        print("warm on-demand", flush=True)
        from bench import warm

        warm_cfg = {**cfg["warm"], "model": e2e.BUNDLED}
        res["warm"] = warm.run(warm_cfg, ["serve", "pool"], work / "warm", env)
    if "overlap" in args.only:
        print("overlap (simulated GPU)", flush=True)
        res["overlap"] = run_case("overlap", cfg["overlap"], env)
    if "scaling" in args.only:
        print("scaling", flush=True)
        res["scaling"] = run_case("scaling", cfg["scaling"], env)
    if "overhead" in args.only:
        print("overhead", flush=True)
        res["overhead"] = run_case("overhead", cfg["overhead"], env)
    if "memory" in args.only:
        print("memory", flush=True)
        m = cfg["memory"]
        res["memory"] = {
            str(n): run_case("memory", {**m, "n": n, "dataset": f"mem{n}"}, env) for n in m["sizes"]
        }
    if "storage" in args.only:
        print("storage", flush=True)
        targets = {"local": f"file://{work}/storage"}
        if args.s3:
            targets["s3"] = args.s3
        res["storage"] = run_case(
            "storage",
            {**cfg["storage"], "model_dir": str(work / "models"), "targets": targets},
            env,
        )
    res["gpu"] = "skipped: no GPU here (bench/gpu_bench.py runs where one is available)"
    res["machine"]["loadavg_end"] = os.getloadavg()
    res["bench_wall_s"] = res["machine"]["bench_wall_s"] = time.time() - t_start
    if merge_into:
        res = _merged(json.loads((out / "bench.json").read_text()), res)
    (out / "bench.json").write_text(json.dumps(res, indent=2, default=str))
    from bench.report import markdown

    (out / "bench.md").write_text(markdown(res))
    print(f"wrote {out / 'bench.json'} and {out / 'bench.md'} ({res['bench_wall_s']:.0f} s)")
    return res


if __name__ == "__main__":
    main()
