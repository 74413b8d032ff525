"""One benchmark case per call, run in a fresh process by :mod:`bench.run`:

    python -m bench.cases CASE '{"json": "params", "result_file": "..."}'

A fresh process per case keeps Ray, Prefect and peak-RSS numbers of one case out of the next.
"""

from __future__ import annotations

import io
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
    steady_rate,
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


# --- 1. efficiency -----------------------------------------------------------------------------


def eff_bare(p: dict[str, Any]) -> dict[str, Any]:
    """The job as a user would write it: one process, the diffusers pipeline, PNGs to Parquet."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    import torch
    from diffusers import DDIMPipeline

    torch.set_num_threads(p["threads"])
    t0 = time.time()
    pipe = DDIMPipeline.from_pretrained(p["model"], use_safetensors=True, local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    t_loaded = time.time()
    n, bs = p["n"], p["batch"]
    events, rows = [], []
    for first in range(0, n, bs):
        ids = list(range(first, min(n, first + bs)))
        gens = [torch.Generator().manual_seed(p.get("seed", 0) + i) for i in ids]
        with torch.inference_mode():
            images = pipe(
                batch_size=len(ids), generator=gens, num_inference_steps=p["steps"]
            ).images
        for i, img in zip(ids, images, strict=True):
            buf = io.BytesIO()
            img.save(buf, format="PNG")
            rows.append({"id": i, "image": {"bytes": buf.getvalue(), "path": f"{i}.png"}})
        events.append((time.time(), len(ids)))
    pq.write_table(pa.Table.from_pylist(rows), Path(p["out"]) / "bare.parquet")
    return {
        "load_s": t_loaded - t0,
        "steady_images_per_s": steady_rate(events),
        "in_process_s": time.time() - t0,
    }


def eff_augflow(p: dict[str, Any]) -> dict[str, Any]:
    """augflow end to end: the real flow (Prefect ephemeral server), a Ray actor pool, GX, registry."""
    from augflow.flows.augment import augment
    from augflow.tasks import progress

    # One CPU for the pool: one actor with p["threads"] intra-op threads, like the other variants.
    _init_ray(p["threads"])
    request = _request(Path(p["model"]), p["out"], p["n"], p)
    events: list[tuple[float, int]] = []
    t0 = time.time()

    def on_event(event: progress.Event) -> None:
        if isinstance(event, progress.ShardResult):
            events.append((time.time(), event.num_rows))

    with progress.listening(on_event):
        state = augment(request, return_state=True)
    outcome = state.result()
    wall = time.time() - t0
    return {
        "flow_s": wall,
        "steady_images_per_s": steady_rate(events),
        "status": outcome.status,
        "num_rows": outcome.num_rows,
        "shards": len(events),
        "task_runs": _task_runs(state.state_details.flow_run_id),
    }


def _task_runs(flow_run_id: Any) -> int:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id]))
        )
    return len(runs)


class _RayDataGen:
    """The peer's callable: one pipeline per actor, a batch of ids in, PNG bytes out."""

    def __init__(self, model: str, steps: int, threads: int, seed: int) -> None:
        import torch
        from diffusers import DDIMPipeline

        torch.set_num_threads(threads)
        self.pipe = DDIMPipeline.from_pretrained(model, use_safetensors=True, local_files_only=True)
        self.pipe.set_progress_bar_config(disable=True)
        self.steps, self.seed = steps, seed

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        import numpy as np
        import torch

        ids = [int(i) for i in batch["id"]]
        gens = [torch.Generator().manual_seed(self.seed + i) for i in ids]
        with torch.inference_mode():
            images = self.pipe(
                batch_size=len(ids), generator=gens, num_inference_steps=self.steps
            ).images
        pngs = []
        for img in images:
            buf = io.BytesIO()
            img.save(buf, format="PNG")
            pngs.append(buf.getvalue())
        return {
            "id": np.asarray(ids),
            "image": np.asarray(pngs, dtype=object),
            "t_done": np.full(len(ids), time.time()),
        }


def eff_raydata(p: dict[str, Any]) -> dict[str, Any]:
    """The peer: ray.data.range → map_batches(actor pool of 1) → write_parquet."""
    import pyarrow.parquet as pq
    import ray

    _init_ray(p["threads"] + 1)  # +1 CPU for Ray Data's read/write tasks beside the actor
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    t0 = time.time()
    out = str(Path(p["out"]) / "raydata")
    ray.data.range(p["n"], override_num_blocks=max(1, p["n"] // p["batch"])).map_batches(
        _RayDataGen,
        fn_constructor_kwargs={
            "model": p["model"],
            "steps": p["steps"],
            "threads": p["threads"],
            "seed": p.get("seed", 0),
        },
        batch_size=p["batch"],
        concurrency=1,
        num_cpus=p["threads"],
    ).write_parquet(out)
    wall = time.time() - t0
    t = pq.read_table(out, columns=["t_done"]).column("t_done").to_pylist()
    counts: dict[float, int] = {}
    for v in t:
        counts[v] = counts.get(v, 0) + 1
    return {
        "pipeline_s": wall,
        "steady_images_per_s": steady_rate(list(counts.items())),
        "num_rows": len(t),
    }


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

    runner.encode_png = timed(runner.encode_png, "png_encode_and_metrics")
    runner.compute_metrics = timed(runner.compute_metrics, "png_encode_and_metrics")
    Storage.write_parquet = timed(Storage.write_parquet, "parquet_encode_and_write")
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


CASES = {
    "eff_bare": eff_bare,
    "eff_augflow": eff_augflow,
    "eff_raydata": eff_raydata,
    "scaling": scaling,
    "overhead": overhead,
    "memory": memory,
    "storage": storage,
}


def main() -> None:
    case, params = sys.argv[1], json.loads(sys.argv[2])
    params.setdefault("tmp", tempfile.mkdtemp(prefix=f"augflow-bench-{case}-"))
    if case.startswith("eff_") or case == "storage":
        params["model"] = str(make_unet_model(Path(params["model_dir"]) / "unet64"))
    result = CASES[case](params)
    Path(params["result_file"]).write_text(json.dumps(result))
    # a normal exit: atexit handlers stop the ephemeral Prefect server and Ray


if __name__ == "__main__":
    main()
