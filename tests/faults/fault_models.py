"""Fault models for the fault suite: a tiny pipeline that generates seeded noise and, on demand,
sleeps, hangs forever, or eats memory until the OS kills it. Test code, not product code.

It loads through augflow's normal path (a ``save_pretrained`` folder whose ``model_index.json``
names ``FaultPipeline``) once :func:`register` added it to the loader and the runner in a process.
Ray workers are other processes: the suite starts Ray with ``worker_process_setup_hook`` =
:data:`SETUP_HOOK`, so every worker registers it before it builds an actor.

Misbehaviour is switched on by *tokens*: files named ``token-*`` in the model's ``token_dir``.
A model call in a hanging or hogging model claims one token (an atomic rename, so exactly one
call gets each) and misbehaves; without a token left it behaves. So a test decides exactly how
many attempts fail: one token = the first attempt hangs and the retry succeeds.
"""

from __future__ import annotations

import os
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

SETUP_HOOK = "faults.fault_models.register"
HOG_STEP = 64 * 2**20
HOG_CAP = 6 * 2**30  # never more than this, even if nothing kills it


def claim_token(token_dir: str) -> str | None:
    """Claim one ``token-*`` file of ``token_dir`` for this process; None when none is left."""
    if not token_dir or not os.path.isdir(token_dir):
        return None
    for name in sorted(os.listdir(token_dir)):
        if name.startswith("token-") and ".claimed-" not in name:
            src = os.path.join(token_dir, name)
            try:
                os.rename(src, f"{src}.claimed-{os.getpid()}")
                return name
            except FileNotFoundError:
                continue  # another call claimed it first
    return None


def claimed(token_dir: Path) -> list[str]:
    return sorted(p.name for p in token_dir.iterdir() if ".claimed-" in p.name)


def add_tokens(token_dir: Path, n: int) -> Path:
    token_dir.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        (token_dir / f"token-{i:03d}").write_text("")
    return token_dir


def _hog(cgroup: str) -> None:
    if cgroup:
        # Join the memory cgroup the test made: its limit is what the kernel enforces.
        Path(cgroup, "cgroup.procs").write_text(str(os.getpid()))
    blocks = []
    while len(blocks) * HOG_STEP < HOG_CAP:
        blocks.append(bytearray(b"\x01") * HOG_STEP)  # written, so the pages are really used
        time.sleep(0.02)
    raise MemoryError("the memory hog was never killed")


class FaultPipeline(DiffusionPipeline):
    """``pipe(generators, (w, h))`` returns (B,3,h,w) noise in [-1, 1], misbehaving per ``mode``:
    ``plain``, ``hang`` (sleep forever) or ``hog`` (allocate until killed), once per token."""

    def __init__(
        self,
        sample_size: int = 8,
        seconds: float = 0.0,
        mode: str = "plain",
        token_dir: str = "",
        cgroup: str = "",
    ) -> None:
        super().__init__()
        self.register_to_config(
            sample_size=int(sample_size),
            seconds=float(seconds),
            mode=mode,
            token_dir=token_dir,
            cgroup=cgroup,
        )

    @torch.inference_mode()
    def __call__(self, generator: list[torch.Generator], size: tuple[int, int]) -> torch.Tensor:
        cfg = self.config
        if cfg.mode in ("hang", "hog") and claim_token(cfg.token_dir):
            if cfg.mode == "hang":
                while True:
                    time.sleep(3600)
            _hog(cfg.cgroup)
        if cfg.seconds > 0:
            time.sleep(cfg.seconds)
        w, h = size
        images = [torch.rand((3, h, w), generator=g) * 2 - 1 for g in generator]
        return torch.stack(images) if images else torch.empty((0, 3, h, w))


def make_fault_model(path: Path, **config: Any) -> Path:
    FaultPipeline(**config).save_pretrained(path, safe_serialization=True)
    return path


class FaultFamily:
    """The runner family of :class:`FaultPipeline` (generate only)."""

    name: ClassVar[str] = "fault"
    summary: ClassVar[str] = "generate with the fault suite's FaultPipeline"

    @classmethod
    def matches(cls, pipeline: Any) -> bool:
        return isinstance(pipeline, FaultPipeline)

    def __init__(self, ctx: ModelContext) -> None:
        self.ctx = ctx
        self.pipe: Any = ctx.pipeline
        self.steps: int = ctx.request.steps or 1

    def check(self) -> None:
        if self.ctx.op.kind != "generate":
            raise ModelLoadError("FaultPipeline only does operation 'generate'")

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
    """Make FaultPipeline folders loadable and runnable in this process (idempotent)."""
    from augflow.models.loading import register_pipeline_class
    from augflow.models.runner import register_family

    register_pipeline_class("FaultPipeline", FaultPipeline)
    register_family(FaultFamily)
