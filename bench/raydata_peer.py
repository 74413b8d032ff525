"""The Ray Data peer: the same job as ``ray.data.range -> map_batches(actor pool) ->
write_parquet``, one process, timed from its start.

    python -m bench.raydata_peer TIMELINE.json --model DIR --n 2048 --steps 5 --batch 16 \
        --actors 2 --threads 1 --out DIR

Same CPU allotment as augflow's default layout: a local Ray with all cores, ``--actors`` actors of
``--threads`` torch threads each, and its workers at this process's niceness (Ray's default is
nice 15, which on a shared machine would handicap the peer, not measure it).
"""

from __future__ import annotations

import argparse
import io
import json
import time
from pathlib import Path
from typing import Any

from bench.timed_run import process_start_time


class _Gen:
    """One pipeline per actor: a batch of ids in, PNG bytes (and when they were done) out."""

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


def main(argv: list[str] | None = None) -> None:
    started = process_start_time()
    ap = argparse.ArgumentParser()
    ap.add_argument("timeline")
    ap.add_argument("--model", required=True)
    ap.add_argument("--n", type=int, required=True)
    ap.add_argument("--steps", type=int, required=True)
    ap.add_argument("--batch", type=int, required=True)
    ap.add_argument("--actors", type=int, required=True)
    ap.add_argument("--threads", type=int, required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)

    import logging
    import os

    import pyarrow.parquet as pq
    import ray

    ray.init(
        # one logical CPU more than the actors take: Ray Data's read and write tasks run beside
        # them (they are light; with every CPU taken by actors they would never be scheduled)
        num_cpus=a.actors * a.threads + 1,
        _node_ip_address="127.0.0.1",
        include_dashboard=False,
        logging_level=logging.WARNING,
        log_to_driver=False,
        _system_config={"worker_niceness": os.getpriority(os.PRIO_PROCESS, 0)},
    )
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    out = str(Path(a.out) / "raydata")
    ray.data.range(a.n, override_num_blocks=max(1, a.n // a.batch)).map_batches(
        _Gen,
        fn_constructor_kwargs={
            "model": a.model,
            "steps": a.steps,
            "threads": a.threads,
            "seed": a.seed,
        },
        batch_size=a.batch,
        concurrency=a.actors,
        num_cpus=a.threads,
    ).write_parquet(out)
    done = time.time()
    t = pq.read_table(out, columns=["t_done"]).column("t_done").to_pylist()
    counts: dict[float, int] = {}
    for v in t:
        counts[v] = counts.get(v, 0) + 1
    timeline = {
        "process_start": started,
        "first_batch_at": min(counts) if counts else None,
        "events": sorted(counts.items()),
        "done_at": done,
        "rows": len(t),
    }
    Path(a.timeline).write_text(json.dumps(timeline))


if __name__ == "__main__":
    main()
