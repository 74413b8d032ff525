"""Run every benchmark, each case in a fresh process, and write ``bench.json`` + ``bench.md``.

    .venv/bin/python -m bench.run --out bench/results            # the numbers (~10-15 min here)
    .venv/bin/python -m bench.run --out /tmp/b --smoke           # seconds-per-case plumbing check
    .venv/bin/python -m bench.run --out bench/results --s3 s3://bucket/prefix   # + storage on S3

All ratios are taken within one run on one machine; absolute numbers on a shared box are noisy.
GPU: see bench/gpu_bench.py (runs only where a GPU is available).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import make_unet_model, quiet_env

FULL: dict[str, Any] = {
    "eff": {"n": 24, "batch": 4, "steps": 20, "shard_size": 4, "threads": 1},
    "scaling": {
        "sizes": [1, 2, 4, 8, 16],
        "sleep": 0.5,
        "batch": 4,
        "shard_size": 8,
        "shards_per_actor": 6,
        "ray_cpus": 16,
    },
    "overhead": {"shard_counts": [1000, 10000], "workers": 2, "batch": 1, "ray_cpus": 2},
    "memory": {"sizes": [256, 2560], "shard_size": 16, "batch": 16, "workers": 2, "ray_cpus": 2},
    "storage": {"n": 16, "batch": 4, "shard_size": 8, "steps": 20, "threads": 1},
}
SMOKE: dict[str, Any] = {
    "eff": {"n": 4, "batch": 2, "steps": 2, "shard_size": 2, "threads": 1},
    "scaling": {
        "sizes": [1, 2],
        "sleep": 0.05,
        "batch": 2,
        "shard_size": 2,
        "shards_per_actor": 3,
        "ray_cpus": 2,
    },
    "overhead": {"shard_counts": [20], "workers": 1, "batch": 1, "ray_cpus": 1},
    "memory": {"sizes": [8, 16], "shard_size": 4, "batch": 4, "workers": 1, "ray_cpus": 1},
    "storage": {"n": 4, "batch": 2, "shard_size": 2, "steps": 2, "threads": 1},
}
ALL = ("efficiency", "scaling", "overhead", "memory", "storage")


def run_case(case: str, params: dict[str, Any], env: dict[str, str]) -> dict[str, Any]:
    """Run one case in a fresh interpreter; returns its result plus the process's total wall."""
    logs = Path(env["AUGFLOW_BENCH_LOGS"])
    n = len(list(logs.glob("*.log")))
    log, result_file = logs / f"{n:02d}-{case}.log", logs / f"{n:02d}-{case}.json"
    t0 = time.time()
    with log.open("w") as fh:
        # output to a file, not a pipe: a server a case starts must not hold our pipe open
        code = subprocess.call(
            [
                sys.executable,
                "-m",
                "bench.cases",
                case,
                json.dumps({**params, "result_file": str(result_file)}),
            ],
            stdout=fh,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=Path(__file__).resolve().parent.parent,
        )
    wall = time.time() - t0
    if code != 0 or not result_file.exists():
        sys.stderr.write(log.read_text()[-8000:])
        raise SystemExit(f"benchmark case {case} failed (exit {code}); log: {log}")
    result = json.loads(result_file.read_text())
    result["total_wall_s"] = wall
    print(f"  {case}: {wall:.1f} s", flush=True)
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
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--out", default="bench/results")
    ap.add_argument("--smoke", action="store_true", help="tiny sizes: checks the plumbing only")
    ap.add_argument("--only", nargs="*", choices=ALL, default=list(ALL))
    ap.add_argument("--s3", default=None, help="also measure the storage share on this S3 root")
    args = ap.parse_args(argv)
    quiet_env()
    cfg = SMOKE if args.smoke else FULL
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="augflow-bench-"))
    env = {
        **os.environ,
        "PREFECT_HOME": str(work / "prefect-home"),
        "PYTHONUNBUFFERED": "1",
        "AUGFLOW_BENCH_LOGS": str(out / "logs"),
    }
    (out / "logs").mkdir(exist_ok=True)
    env.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    # A loaded box can take longer than Prefect's default 20 s to start its ephemeral server.
    env.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "300")
    _warm_prefect(env)  # create the run's Prefect database once, outside every timing
    make_unet_model(work / "models" / "unet64")  # built once, outside every timing
    res: dict[str, Any] = {"machine": machine(), "smoke": args.smoke, "config": cfg}
    t_start = time.time()

    if "efficiency" in args.only:
        print("efficiency", flush=True)
        e = cfg["eff"]
        base = {**e, "model_dir": str(work / "models")}

        def case(name: str, **extra: Any) -> dict[str, Any]:
            d = work / f"eff-{len(res.get('efficiency', {}))}-{name}"
            d.mkdir()
            return run_case(name, {**base, "out": str(d), **extra}, env)

        eff: dict[str, Any] = {}
        res["efficiency"] = eff
        # interleaved, with the bare loop first and last: its drift shows how noisy the box was
        eff["bare"] = case("eff_bare")
        eff["augflow"] = case("eff_augflow")
        eff["raydata"] = case("eff_raydata")
        if not args.smoke:
            eff["augflow_batch_invariant"] = case("eff_augflow", batch_invariant=True)
            eff["bare_again"] = case("eff_bare")
        else:  # the smoke run checks the plumbing of each variant once
            eff["augflow_batch_invariant"] = eff["augflow"]
            eff["bare_again"] = eff["bare"]
        a = [eff["bare"]["steady_images_per_s"], eff["bare_again"]["steady_images_per_s"]]
        a_mean = sum(a) / 2
        aw = (eff["bare"]["total_wall_s"] + eff["bare_again"]["total_wall_s"]) / 2
        b, c = eff["augflow"], eff["raydata"]
        eff["ratios"] = {
            "b_over_a_steady": b["steady_images_per_s"] / a_mean,
            "b_over_c_steady": b["steady_images_per_s"] / c["steady_images_per_s"],
            "b_over_a_total": aw / b["total_wall_s"],
            "b_over_c_total": c["total_wall_s"] / b["total_wall_s"],
            "b_invariant_over_a_steady": eff["augflow_batch_invariant"]["steady_images_per_s"]
            / a_mean,
            "bare_drift": a[1] / a[0],
        }

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
    res["bench_wall_s"] = time.time() - t_start
    (out / "bench.json").write_text(json.dumps(res, indent=2))
    from bench.report import markdown

    (out / "bench.md").write_text(markdown(res))
    print(f"wrote {out / 'bench.json'} and {out / 'bench.md'} ({res['bench_wall_s']:.0f} s)")
    return res


if __name__ == "__main__":
    main()
