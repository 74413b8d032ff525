"""One benchmark case per call, run in a fresh process by :mod:`bench.run`:

    python -m bench.cases CASE '{"json": "params", "result_file": "..."}'

A fresh process per case keeps Ray, Prefect and peak-RSS numbers of one case out of the next.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import (
    ActorMemory,
    full_pool_window,
    make_unet_model,
    quiet_env,
    self_peak_rss_mb,
)

quiet_env()


def _request(model: Path, out: str, n: int, p: dict[str, Any], **extra: Any):
    from augflow.schemas.request import parse_request

    data = {
        "dataset": p.get("dataset", "bench"),
        "operation": {"kind": "generate", "num_images": n},
        "model": {"id": str(model)},
        "steps": p.get("steps", 20),
        "seed": p.get("seed", 0),
        "shard_size": p["shard_size"],
        "output": out,
        # batch_invariant: one image per model call (the CPU default), else p["batch"] per call
        "compute": {"micro_batch": 1 if p.get("batch_invariant") else p["batch"]},
        "execution": {"workers": p.get("workers", 1), "device": "cpu"},
        **extra,
    }
    return parse_request(data)


def _init_ray(num_cpus: int, fake_model: bool = False) -> None:
    """Start Ray; with ``fake_model`` every worker registers the sleep model before its actors
    start (and so does this process), which only the cases that use it pay for."""
    import logging

    import ray

    runtime_env = None
    if fake_model:
        from bench import fake_model as fake

        fake.register()
        runtime_env = fake.ray_runtime_env()
    ray.init(
        num_cpus=num_cpus,
        _node_ip_address="127.0.0.1",
        include_dashboard=False,
        logging_level=logging.WARNING,
        log_to_driver=False,
        runtime_env=runtime_env,
    )


def make_sleep(path: str | Path, seconds_per_batch: float, side: int = 8) -> Path:
    from bench.fake_model import make_sleep_model

    return make_sleep_model(path, seconds_per_batch, side)


# --- 2. orchestration scaling --------------------------------------------------------------------


def scaling(p: dict[str, Any]) -> dict[str, Any]:
    """Sleep model, pool of N actors, execute level; throughput in the full-pool window vs N/W."""
    from augflow.tasks.execute import execute_plan
    from augflow.tasks.plan import plan_request

    _init_ray(p["ray_cpus"], fake_model=True)  # logical CPUs: sleeping actors need no real ones
    model = make_sleep(Path(p["tmp"]) / "sleep", p["sleep"], 8)
    out: dict[str, Any] = {}
    for size in p["sizes"]:
        n_shards = p["shards_per_actor"] * size
        n = n_shards * p["shard_size"]
        req = _request(
            model,
            str(Path(p["tmp"]) / f"pool{size}"),
            n,
            {**p, "workers": size, "steps": 1},
        )
        plan = plan_request(req)
        done: list[tuple[float, float]] = []
        t0 = time.time()
        execute_plan(
            req,
            plan,
            on_result=lambda r, done=done: done.append((time.time() - r.seconds, time.time())),
        )
        wall = time.time() - t0
        work = p["sleep"] * -(-p["shard_size"] // p["batch"])  # ideal seconds per shard
        window = full_pool_window(done, size)
        if window is None:
            eff = None
            rate = None
        else:
            # from the first completion in the full pool (its warm-up excluded) to the last start
            t_a = min(e for _, e in done if e >= window[0])
            ends = [e for _, e in done if t_a < e <= window[1]]
            rate = len(ends) / (window[1] - t_a) if window[1] > t_a else None
            window = (t_a, window[1])
            eff = rate / (size / work) if rate else None
        out[str(size)] = {
            "shards": n_shards,
            "wall_s": wall,
            "first_result_s": min(e for _, e in done) - t0,
            "steady_shards_per_s": rate,
            "ideal_shards_per_s": size / work,
            "efficiency": eff,
            "end_to_end_efficiency": (n_shards * work / size) / wall,
        }
    return out


def overhead(p: dict[str, Any]) -> dict[str, Any]:
    """~0-second shards through the pool: what one shard costs augflow (driver + actor + storage)."""
    from augflow.tasks.commits import committed_results
    from augflow.tasks.execute import execute_plan
    from augflow.tasks.layout import RunLayout
    from augflow.tasks.plan import plan_request
    from augflow.tasks.storage import Storage

    _init_ray(p["ray_cpus"], fake_model=True)
    model = make_sleep(Path(p["tmp"]) / "sleep0", 0.0, 8)
    res: dict[str, Any] = {}
    for n_shards in p["shard_counts"]:
        req = _request(
            model,
            str(Path(p["tmp"]) / f"o{n_shards}"),
            n_shards,
            {**p, "shard_size": 1, "steps": 1},
        )
        t = time.time()
        plan = plan_request(req)
        plan_s = time.time() - t
        ends: list[float] = []
        t0 = time.time()
        execute_plan(req, plan, on_result=lambda r, ends=ends: ends.append(time.time()))
        wall = time.time() - t0
        steady = (max(ends) - min(ends)) / max(1, len(ends) - 1)
        t = time.time()
        committed_results(Storage(req.output), RunLayout(req.request_hash), plan.shard_ids())
        resume_s = time.time() - t
        res[str(n_shards)] = {
            "workers": p["workers"],
            "plan_s": plan_s,
            "execute_s": wall,
            "startup_s": min(ends) - t0,
            "driver_s_per_shard": steady,
            # each actor spends `workers` x the driver interval per shard
            "actor_s_per_shard": steady * p["workers"],
            "resume_scan_s": resume_s,
            "peak_driver_rss_mb": self_peak_rss_mb(),
        }
    return res


def _task_runs(flow_run_id: Any) -> int:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id]))
        )
    return len(runs)


# --- 3. memory ------------------------------------------------------------------------------------


def memory(p: dict[str, Any]) -> dict[str, Any]:
    """The full flow with the sleep model; peak RSS of this driver and of each actor."""
    from augflow.flows.augment import augment

    _init_ray(p["ray_cpus"], fake_model=True)
    model = make_sleep(Path(p["tmp"]) / "sleepm", 0.0, p.get("side", 64))
    req = _request(model, str(Path(p["tmp"]) / "mem"), p["n"], {**p, "steps": 1})
    t0 = time.time()
    with ActorMemory() as probe:
        state = augment(req, return_state=True)
        outcome = state.result()
    return {
        "images": p["n"],
        "shards": -(-p["n"] // p["shard_size"]),
        "flow_s": time.time() - t0,
        "status": outcome.status,
        "driver_peak_rss_mb": self_peak_rss_mb(),
        "actor_peak_rss_mb": sorted(probe.peak_mb.values()),
        "task_runs": _task_runs(state.state_details.flow_run_id),
    }


# --- 4. storage -----------------------------------------------------------------------------------


def storage(p: dict[str, Any]) -> dict[str, Any]:
    """ShardWorker in this process, with timers around PNG encoding+metrics and Parquet+marker I/O."""
    import torch

    import augflow.models.runner as runner
    from augflow.tasks import shard_worker
    from augflow.tasks.plan import plan_request
    from augflow.tasks.storage import Storage
    from bench.fake_model import register

    register()  # the sleep model runs in this process here, no Ray
    torch.set_num_threads(p["threads"])
    spent = {"png_encode_and_metrics": 0.0, "parquet_encode_and_write": 0.0, "marker_write": 0.0}

    def timed(fn: Any, key: str) -> Any:
        def wrapper(*a: Any, **k: Any) -> Any:
            t = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                spent[key] += time.perf_counter() - t

        return wrapper

    # the names the shard worker and the runner call (each module's own reference)
    runner.tensor_to_uint8 = timed(runner.tensor_to_uint8, "png_encode_and_metrics")
    runner.chw_to_uint8 = timed(runner.chw_to_uint8, "png_encode_and_metrics")
    runner.encode_png_array = timed(runner.encode_png_array, "png_encode_and_metrics")
    runner.compute_metrics = timed(runner.compute_metrics, "png_encode_and_metrics")
    shard_worker.parquet_bytes = timed(shard_worker.parquet_bytes, "parquet_encode_and_write")
    Storage.write_bytes = timed(Storage.write_bytes, "parquet_encode_and_write")
    Storage.create_json_exclusive = timed(Storage.create_json_exclusive, "marker_write")
    out: dict[str, Any] = {}
    for label, uri in p["targets"].items():
        for name, model in (
            ("unet", Path(p["model"])),
            ("sleep0", make_sleep(Path(p["tmp"]) / "s0", 0.0, 64)),
        ):
            for k in spent:
                spent[k] = 0.0
            req = _request(model, f"{uri.rstrip('/')}/{name}", p["n"], p)
            worker = shard_worker.ShardWorker(req, device="cpu")
            t0 = time.perf_counter()
            for shard in plan_request(req).shards:
                worker.process(shard)
            wall = time.perf_counter() - t0
            io_s = sum(spent.values())
            out[f"{label}/{name}"] = {
                "wall_s": wall,
                **{f"{k}_s": v for k, v in spent.items()},
                "share": io_s / wall,
            }
    return out


# --- 5. the GPU critical path, simulated ------------------------------------------------------


def overlap(p: dict[str, Any]) -> dict[str, Any]:
    """A fake "device" (the sleep model: ``seconds`` per micro-batch of ``batch`` images at
    ``side``x``side``, no host CPU: its images are views) with the real host work after it
    (float -> uint8, PNG encoding, per-row metrics), through ShardWorker with two shards in flight
    (as an actor runs them). Device busy = device time / wall, from the second micro-batch to the
    last one. encode_threads 0 encodes inside the compute lock; interleaved repeats."""
    import concurrent.futures as cf
    import functools
    import statistics

    from augflow.models.images import chw_to_uint8
    from augflow.tasks import shard_worker
    from augflow.tasks.plan import plan_request
    from bench.fake_model import register

    register()
    model = Path(p["tmp"]) / "sleep-gpu"
    from bench.fake_model import make_sleep_model

    make_sleep_model(model, p["seconds"], p["side"], pattern="smooth")

    # what one image costs the host after the device: conversion, PNG, metrics; one thread
    probe = shard_worker.ShardWorker(
        _request(model, str(Path(p["tmp"]) / "probe"), p["batch"], p, image_size=p["side"]),
        device="cpu",
    )
    chw = probe.model.family.pipe._base(p["side"], p["side"]).numpy()
    costs = []
    for _ in range(5):  # what an encode thread runs for one image: float -> uint8, PNG, metrics
        t = time.perf_counter()
        out = probe.model._encode(functools.partial(chw_to_uint8, chw), None, None, "probe")
        costs.append(time.perf_counter() - t)
    if out.error:
        raise RuntimeError(f"the probe image failed to encode: {out.error}")
    png = out.png
    per_image = statistics.median(costs)

    runs: dict[str, list[float]] = {str(k): [] for k in p["encode_threads"]}
    walls: dict[str, list[float]] = {str(k): [] for k in p["encode_threads"]}
    overruns: dict[str, list[int]] = {str(k): [] for k in p["encode_threads"]}
    for rep in range(p["repeats"]):
        for k in p["encode_threads"]:
            out = str(Path(p["tmp"]) / f"run-{rep}-{k}")
            req = _request(model, out, p["n"], p, image_size=p["side"])
            worker = shard_worker.ShardWorker(req, device="cpu", encode_threads=k)
            pipe = worker.model.family.pipe
            pipe.busy.clear()
            t0 = time.perf_counter()
            with cf.ThreadPoolExecutor(2) as pool:  # the actor's two shards in flight
                list(pool.map(worker.process, plan_request(req).shards))
            walls[str(k)].append(time.perf_counter() - t0)
            spans = sorted(pipe.busy)[1:]
            window = spans[-1][1] - spans[0][0]
            # a batch is `seconds` of device time; beyond that the host was late making it
            runs[str(k)].append(sum(min(e - s, p["seconds"]) for s, e in spans) / window)
            overruns[str(k)].append(sum(e - s > 1.05 * p["seconds"] for s, e in spans))
    batch_s = p["seconds"]
    return {
        "encode_and_metrics_s_per_image": per_image,
        "png_bytes_per_image": len(png),
        "raw_bytes_per_image": p["side"] * p["side"] * 3,
        # encode threads needed to keep up with the device at 95 % busy
        "cores_needed_for_95": 0.95 * per_image * p["batch"] / batch_s,
        "device_busy": runs,
        # batches whose making overran the device time (counted busy only up to that time)
        "device_overruns": overruns,
        "walls_s": walls,  # per encode-thread setting ("wall_s" is the process wall)
    }


CASES = {
    "scaling": scaling,
    "overhead": overhead,
    "memory": memory,
    "storage": storage,
    "overlap": overlap,
}


def main() -> None:
    case, params = sys.argv[1], json.loads(sys.argv[2])
    params.setdefault("tmp", tempfile.mkdtemp(prefix=f"augflow-bench-{case}-"))
    if case == "storage":
        params["model"] = str(make_unet_model(Path(params["model_dir"]) / "unet64"))
    result = CASES[case](params)
    Path(params["result_file"]).write_text(json.dumps(result))
    # a normal exit: atexit handlers stop the ephemeral Prefect server and Ray


if __name__ == "__main__":
    main()
