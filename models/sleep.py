"""A fake pipeline for benchmarks and tests: it sleeps a fixed time per batch and uses no CPU.

It loads through augflow's normal path (``save_pretrained`` folder → ``model_index.json`` →
:data:`augflow.models.loading.AUGFLOW_PIPELINES`), so orchestration benchmarks measure everything
augflow does around a model — actors, storage, commit markers — with the model's cost fixed and
known. It supports ``generate`` only and returns seeded noise images (not blank, so the quality
gate passes). No weights, no scheduler.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch
from diffusers import DiffusionPipeline


class SleepPipeline(DiffusionPipeline):
    """``pipe(generators, (w, h))`` sleeps ``seconds_per_batch`` and returns (B,3,h,w) in [-1, 1]."""

    def __init__(self, seconds_per_batch: float = 0.0, sample_size: int = 8) -> None:
        super().__init__()
        self.register_to_config(
            seconds_per_batch=float(seconds_per_batch), sample_size=int(sample_size)
        )

    @torch.inference_mode()
    def __call__(
        self, generator: list[torch.Generator], size: tuple[int, int] | None = None
    ) -> torch.Tensor:
        w, h = size or (self.config.sample_size, self.config.sample_size)
        if self.config.seconds_per_batch > 0:
            time.sleep(self.config.seconds_per_batch)
        images = [torch.rand((3, h, w), generator=g) * 2 - 1 for g in generator]
        return torch.stack(images) if images else torch.empty((0, 3, h, w))


def make_sleep_model(
    path: str | Path, seconds_per_batch: float = 0.0, sample_size: int = 8
) -> Path:
    """Save a SleepPipeline folder at ``path`` and return the path."""
    path = Path(path)
    SleepPipeline(seconds_per_batch, sample_size).save_pretrained(path, safe_serialization=True)
    return path


class SleepFamily:
    """The :class:`~augflow.models.runner.AugmentModel` family for :class:`SleepPipeline`.

    A whole batch (``execution.batch_size`` items) is one sleep: the output is seeded noise per
    item, so batching never changes an image and there is nothing to make batch-invariant.
    """

    name = "sleep"

    def __init__(self, model: Any) -> None:
        self.model = model
        self.pipe = model.pipeline
        self.op = model.op
        self.request = model.request
        model.max_batch = self.request.execution.batch_size

    def check(self) -> None:
        from augflow.schemas.errors import ModelLoadError

        if self.op.kind != "generate":
            raise ModelLoadError(
                f"model {self.model.model_id!r} is a SleepPipeline (a benchmark fake); it only "
                f"does operation 'generate', not {self.op.kind!r}"
            )

    def expected_size(self, source_size: tuple[int, int] | None) -> tuple[int, int]:
        side = self.request.image_size or int(self.pipe.config.sample_size)
        return side, side

    def compute(
        self, items: list[Any], sources: list[Any], gens: list[torch.Generator]
    ) -> tuple[torch.Tensor, list[None]]:
        return self.pipe(gens, self.expected_size(None)), [None] * len(items)
