"""The benchmarks' fake model: a pipeline that sleeps a fixed time per micro-batch and uses no CPU.

It is not part of augflow: it loads through augflow's normal path (``save_pretrained`` folder ->
``model_index.json`` -> the loader's class table) only after :func:`register` added it to the
loader (:func:`augflow.models.loading.register_pipeline_class`) and its family to the runner
(:func:`augflow.models.runner.register_family`) in this process. Ray actors are other processes:
the benchmarks start Ray with ``runtime_env={"worker_process_setup_hook": SETUP_HOOK}`` so every
worker registers it before it builds an actor (:func:`ray_runtime_env`).

So orchestration benchmarks measure everything augflow does around a model — actors, storage,
commit markers — with the model's cost fixed and known. It does ``generate`` only and returns
seeded images (not blank, so the quality gate passes). No weights, no scheduler.

``pattern``: ``noise`` (uniform noise per image: the worst case for PNG, and made with a little
CPU per image) or ``smooth`` (one low-frequency picture with a light texture, made once per size
and shown through a different window per image: compresses like a photo, ~50 % of raw). A
``smooth`` batch is a strided view, not a copy, so the "device" uses no host CPU — the
simulated-GPU benchmark's fake device must not take the cores the host work needs. Each call
records when the "device" worked (``busy``) so a benchmark can measure how busy it was; a sleep
that overran (the thread got the CPU or the GIL back late) is counted busy only up to
``seconds_per_batch`` by that benchmark.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import torch
from diffusers import DiffusionPipeline
from PIL import Image

from augflow.models.families.base import Computed, ModelContext
from augflow.schemas.errors import ModelLoadError
from augflow.schemas.records import WorkItem

#: rows between two ``smooth`` images of a batch, and how many first rows the seed picks from
_WINDOW_STEP = 16
_WINDOW_STARTS = 8
#: what Ray's ``worker_process_setup_hook`` imports and calls in every worker process
SETUP_HOOK = "bench.fake_model.register"


class SleepPipeline(DiffusionPipeline):
    """``pipe(generators, (w, h))`` sleeps ``seconds_per_batch`` and returns (B,3,h,w) in [-1, 1]."""

    def __init__(
        self, seconds_per_batch: float = 0.0, sample_size: int = 8, pattern: str = "noise"
    ) -> None:
        super().__init__()
        if pattern not in ("noise", "smooth"):
            raise ValueError(f"pattern must be 'noise' or 'smooth', not {pattern!r}")
        self.register_to_config(
            seconds_per_batch=float(seconds_per_batch),
            sample_size=int(sample_size),
            pattern=pattern,
        )
        #: (start, end) of every sleep, i.e. when the simulated device was busy
        self.busy: list[tuple[float, float]] = []
        self._bases: dict[tuple[int, int], torch.Tensor] = {}
        self._tall: dict[tuple[int, int], torch.Tensor] = {}
        self._lock = threading.Lock()

    @torch.inference_mode()
    def __call__(
        self, generator: list[torch.Generator], size: tuple[int, int] | None = None
    ) -> torch.Tensor:
        w, h = size or (self.config.sample_size, self.config.sample_size)
        if self.config.seconds_per_batch > 0:
            start = time.perf_counter()
            time.sleep(self.config.seconds_per_batch)
            self.busy.append((start, time.perf_counter()))
        if not generator:
            return torch.empty((0, 3, h, w))
        if getattr(self.config, "pattern", "noise") == "smooth":
            return self._windows(h, w, len(generator), int(generator[0].initial_seed()))
        return torch.stack([torch.rand((3, h, w), generator=g) * 2 - 1 for g in generator])

    def _windows(self, h: int, w: int, count: int, seed: int) -> torch.Tensor:
        """``count`` distinct (3, h, w) images as one strided view of a taller picture (the base,
        repeated downwards): image i starts _WINDOW_STEP * (i + seed % _WINDOW_STARTS) rows down.
        A view, not a copy: the device's output costs the host no CPU."""
        rows = h + _WINDOW_STEP * (count + _WINDOW_STARTS)
        base = self._base(h, w)
        with self._lock:
            tall = self._tall.get((h, w))
            if tall is None or tall.shape[1] < rows:
                tall = base[:, torch.arange(rows) % h].contiguous()
                self._tall[(h, w)] = tall
        start = _WINDOW_STEP * (seed % _WINDOW_STARTS)
        return tall.as_strided(
            (count, 3, h, w), (_WINDOW_STEP * w, tall.shape[1] * w, w, 1), start * w
        )

    def _base(self, h: int, w: int) -> torch.Tensor:
        """A photo-like picture: smooth colour fields plus a light, fixed texture."""
        with self._lock:
            if (h, w) not in self._bases:
                g = torch.Generator().manual_seed(h * 100_003 + w)
                coarse = torch.rand((1, 3, max(2, h // 32), max(2, w // 32)), generator=g)
                smooth = torch.nn.functional.interpolate(
                    coarse, size=(h, w), mode="bicubic", align_corners=False
                )[0]
                texture = torch.randn((3, h, w), generator=g) * 0.02
                self._bases[(h, w)] = (smooth * 2 - 1 + texture).clamp(-1, 1)
            return self._bases[(h, w)]


def make_sleep_model(
    path: str | Path, seconds_per_batch: float = 0.0, sample_size: int = 8, pattern: str = "noise"
) -> Path:
    """Save a SleepPipeline folder at ``path`` and return the path."""
    path = Path(path)
    SleepPipeline(seconds_per_batch, sample_size, pattern).save_pretrained(
        path, safe_serialization=True
    )
    return path


class SleepFamily:
    """The runner family of :class:`SleepPipeline`: one sleep per micro-batch
    (``compute.micro_batch`` items). Outputs are seeded noise per item, so batching never
    changes an image."""

    name: ClassVar[str] = "sleep"
    summary: ClassVar[str] = "generate with the benchmarks' SleepPipeline"

    @classmethod
    def matches(cls, pipeline: Any) -> bool:
        return isinstance(pipeline, SleepPipeline)

    def __init__(self, ctx: ModelContext) -> None:
        self.ctx = ctx
        self.pipe: Any = ctx.pipeline
        self.steps: int = ctx.request.steps or 1  # it has no sampling loop

    def check(self) -> None:
        if self.ctx.op.kind != "generate":
            raise ModelLoadError(
                f"model {self.ctx.model_id!r} is a SleepPipeline (a benchmark fake); it only "
                f"does operation 'generate', not {self.ctx.op.kind!r}"
            )

    def expected_size(self, source_size: tuple[int, int] | None) -> tuple[int, int]:
        side = self.ctx.request.image_size or int(self.pipe.config.sample_size)
        return side, side

    def compute(
        self,
        items: Sequence[WorkItem],
        sources: Sequence[Image.Image | None],
        generators: list[torch.Generator],
    ) -> Computed:
        return Computed(self.pipe(generators, self.expected_size(None)), [None] * len(items))


def register() -> None:
    """Make SleepPipeline folders loadable and runnable in this process (idempotent)."""
    from augflow.models.loading import register_pipeline_class
    from augflow.models.runner import register_family

    register_pipeline_class("SleepPipeline", SleepPipeline)
    register_family(SleepFamily)


def ray_runtime_env() -> dict[str, Any]:
    """The ``runtime_env`` for ``ray.init`` that registers the fake in every Ray worker.

    Ray runs the hook before it puts the driver's ``sys.path`` on the worker's, so the worker
    finds ``bench`` through ``PYTHONPATH`` (the benchmarks run Ray on this machine only).
    """
    root = str(Path(__file__).resolve().parent.parent)
    path = os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p)
    return {"worker_process_setup_hook": SETUP_HOOK, "env_vars": {"PYTHONPATH": path}}
