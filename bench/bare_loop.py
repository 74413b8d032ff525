"""The bare loop: the job as a person writes it without augflow, one process, timed from its start.

    python -m bench.bare_loop TIMELINE.json --model DIR --n 16 --steps 5 --batch 16 --out DIR
        [--threads T]

A ``DDIMPipeline`` (the same safetensors folder augflow loads), batches of ``--batch`` images with
one seeded ``torch.Generator`` per image, PNG bytes into one Parquet file at the end. ``--threads``
sets torch's intra-op threads (default: torch's own choice, all cores). The timeline holds the
process start (from /proc), when the model was loaded, each batch's completion, and when the
Parquet file was written; the caller times the process, exit included.
"""

from __future__ import annotations

import argparse
import io
import json
import time
from pathlib import Path

from bench.timed_run import process_start_time


def main(argv: list[str] | None = None) -> None:
    started = process_start_time()
    ap = argparse.ArgumentParser()
    ap.add_argument("timeline")
    ap.add_argument("--model", required=True)
    ap.add_argument("--n", type=int, required=True)
    ap.add_argument("--steps", type=int, required=True)
    ap.add_argument("--batch", type=int, required=True)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--out", required=True)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)

    import pyarrow as pa
    import pyarrow.parquet as pq
    import torch
    from diffusers import DDIMPipeline

    if a.threads:
        torch.set_num_threads(a.threads)
    pipe = DDIMPipeline.from_pretrained(a.model, use_safetensors=True, local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    loaded = time.time()
    rows, events = [], []
    for first in range(0, a.n, a.batch):
        ids = list(range(first, min(a.n, first + a.batch)))
        gens = [torch.Generator().manual_seed(a.seed + i) for i in ids]
        with torch.inference_mode():
            images = pipe(batch_size=len(ids), generator=gens, num_inference_steps=a.steps).images
        for i, img in zip(ids, images, strict=True):
            buf = io.BytesIO()
            img.save(buf, format="PNG")
            rows.append({"id": i, "image": {"bytes": buf.getvalue(), "path": f"{i}.png"}})
        events.append((time.time(), len(ids)))
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), out / "bare.parquet")
    timeline = {
        "process_start": started,
        "loaded_at": loaded,
        "first_batch_at": events[0][0] if events else None,
        "events": events,
        "done_at": time.time(),
        "threads": torch.get_num_threads(),
        "batch": a.batch,
    }
    Path(a.timeline).write_text(json.dumps(timeline))


if __name__ == "__main__":
    main()
