"""augflow's SR3Pipeline (:mod:`augflow.models.sr3`): conditional denoising and super-resolution.

operation  how
denoise    the source is the condition
upscale    bicubic x factor, then the condition (the model was trained on that input)

A model serves the task (and, for upscale, the factors) it was trained for; anything else is
refused before any work starts. ``steps`` unset means the model's ``config.default_steps``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import torch
from PIL import Image

from augflow.models.families.base import Computed, ModelContext
from augflow.models.families.common import output_size, present, run_padded, unsupported
from augflow.models.images import pil_to_tensor
from augflow.models.sr3 import SR3Pipeline
from augflow.schemas.errors import ModelLoadError
from augflow.schemas.records import WorkItem
from augflow.schemas.request import DenoiseOp, UpscaleOp

OPERATIONS = "denoise and upscale"
#: inputs are reflect-padded to a multiple of this before SR3Pipeline tiles them
PAD_MULTIPLE = 8


class SR3Family:
    name: ClassVar[str] = "sr3"
    summary: ClassVar[str] = f"{OPERATIONS} with augflow's SR3Pipeline"

    @classmethod
    def matches(cls, pipeline: Any) -> bool:
        return isinstance(pipeline, SR3Pipeline)

    def __init__(self, ctx: ModelContext) -> None:
        self.ctx = ctx
        self.pipe: Any = ctx.pipeline
        self.op = ctx.op
        steps = ctx.request.steps
        self.steps: int = steps if steps is not None else int(self.pipe.config.default_steps)

    def check(self) -> None:
        kind = self.op.kind
        if kind not in ("denoise", "upscale"):
            raise unsupported(self.ctx, OPERATIONS)
        factor = self.op.factor if isinstance(self.op, UpscaleOp) else 1
        if not self.pipe.supports(kind, factor):
            cfg = self.pipe.config
            raise ModelLoadError(
                f"model {self.ctx.model_id!r} was trained for {cfg.get('task')!r} (factors "
                f"{cfg.get('factors')}), not {kind!r}"
                + (f" x{factor}" if kind == "upscale" else "")
                + "; pick the bundled model made for this operation"
            )

    def expected_size(self, source_size: tuple[int, int] | None) -> tuple[int, int]:
        return output_size(self.op, (0, 0), source_size)

    def compute(
        self,
        items: Sequence[WorkItem],
        sources: Sequence[Image.Image | None],
        generators: list[torch.Generator],
    ) -> Computed:
        srcs = present(sources)
        if isinstance(self.op, UpscaleOp):
            w, h = srcs[0].size
            f = self.op.factor
            cond = [s.resize((w * f, h * f), Image.Resampling.BICUBIC) for s in srcs]
        else:
            cond = srcs
        x = run_padded(pil_to_tensor(cond), PAD_MULTIPLE, lambda c: self._restore(c, generators))
        return Computed(x, list(srcs))

    def _restore(self, cond: torch.Tensor, gens: list[torch.Generator]) -> torch.Tensor:
        kwargs: dict[str, Any] = {}
        if isinstance(self.op, DenoiseOp):
            # None: the pipeline estimates each image's σ itself
            kwargs["noise_level"] = self.op.noise_level
        out = self.pipe(
            cond.to(self.ctx.torch_device, self.ctx.dtype),
            generator=gens,
            num_inference_steps=self.steps,
            **kwargs,
        )
        return out.float()
