"""Shared pieces of the benchmarks: the models, timing arithmetic, peak-memory probes."""

from __future__ import annotations

import os
import resource
import threading
import time
from pathlib import Path
from typing import Any

#: The efficiency model: a small pixel-space UNet at 64x64 — small enough for a 2-core box, large
#: enough that 20 sampling steps dominate everything augflow does around them.
UNET_BLOCKS = (16, 32, 32)
IMAGE_SIDE = 64


def quiet_env() -> None:
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("TQDM_DISABLE", "1")


def make_unet_model(path: str | Path) -> Path:
    """A DDIMPipeline folder (safetensors) with a seeded random UNet2DModel at 64x64."""
    import torch
    from diffusers import DDIMPipeline, DDIMScheduler, UNet2DModel

    path = Path(path)
    if (path / "model_index.json").exists():
        return path
    torch.manual_seed(0)
    unet = UNet2DModel(
        sample_size=IMAGE_SIDE,
        in_channels=3,
        out_channels=3,
        layers_per_block=1,
        block_out_channels=UNET_BLOCKS,
        norm_num_groups=8,
        down_block_types=("DownBlock2D",) * len(UNET_BLOCKS),
        up_block_types=("UpBlock2D",) * len(UNET_BLOCKS),
    )
    sched = DDIMScheduler(num_train_timesteps=1000, clip_sample=True)
    DDIMPipeline(unet=unet, scheduler=sched).save_pretrained(path, safe_serialization=True)
    return path


def steady_rate(events: list[tuple[float, int]], parallel: int = 1) -> float | None:
    """Items/s in steady state: start-up and the first unit of each of ``parallel`` workers
    excluded.

    ``events`` are (completion time, items completed) for each unit (batch or shard). With
    ``parallel`` workers the clock starts at the ``parallel``-th completion and counts only the
    units after it: starting at the first completion and counting every later unit would credit
    the other workers' first units, computed before the window, to it (two actors finishing their
    first shards together would look 1.5x as fast at 4 shards).
    """
    ev = sorted(events)
    k = max(1, parallel)
    if len(ev) <= k or ev[-1][0] <= ev[k - 1][0]:
        return None
    return sum(n for _, n in ev[k:]) / (ev[-1][0] - ev[k - 1][0])


def full_pool_window(spans: list[tuple[float, float]], size: int) -> tuple[float, float] | None:
    """(t_a, t_b): from the first moment all ``size`` workers are busy to the last unit's start.

    ``spans`` are (start, end) of each unit; before t_a actors are still starting, after t_b the
    queue is empty and the pool drains, so [t_a, t_b] is the steady state of a full pool.
    """
    points = sorted([(s, 1) for s, _ in spans] + [(e, -1) for _, e in spans])
    busy, t_a = 0, None
    for t, d in points:
        busy += d
        if busy >= size and t_a is None:
            t_a = t
    t_b = max(s for s, _ in spans)
    if t_a is None or t_b <= t_a:
        return None
    return t_a, t_b


def self_peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class ActorMemory:
    """Samples VmHWM (the kernel's peak-RSS high-water mark) of every Ray actor process of a class.

    The mark is exact up to the last sample; actors are killed at the end of a pool, so the last
    ~``every`` seconds of an actor's life can be missed (shards stream, so its peak is reached early).
    """

    def __init__(self, marker: str = "ray::_ShardActor", every: float = 0.2) -> None:
        self.marker = marker.encode()
        self.root = os.getpid()  # only actors of the Ray this process started count
        self.every = every
        self.peak_mb: dict[int, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> ActorMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.every)

    def sample(self) -> None:
        for pid in os.listdir("/proc"):
            if not pid.isdigit():
                continue
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    if not f.read().startswith(self.marker):
                        continue
                if not _descends_from(int(pid), self.root):  # another run's actor on this box
                    continue
                with open(f"/proc/{pid}/status") as f:
                    for line in f:
                        if line.startswith("VmHWM:"):
                            mb = int(line.split()[1]) / 1024
                            self.peak_mb[int(pid)] = max(self.peak_mb.get(int(pid), 0.0), mb)
            except OSError:
                continue


def _descends_from(pid: int, root: int) -> bool:
    seen = 0
    while pid > 1 and seen < 64:
        if pid == root:
            return True
        try:
            with open(f"/proc/{pid}/status") as f:
                pid = next(int(line.split()[1]) for line in f if line.startswith("PPid:"))
        except (OSError, StopIteration, ValueError):
            return False
        seen += 1
    return False


def now() -> float:
    return time.time()
