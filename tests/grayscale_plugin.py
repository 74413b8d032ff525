"""The worked example of docs/architecture.md: a new operation, end to end, as a plugin.

``grayscale`` turns every input into its luminance (optionally with a contrast gain). It needs:

1. a request schema: an :class:`OperationSpec` subclass (``kind`` literal, fields, the size and
   faithfulness rules) added with :func:`register_operation`;
2. a model: a pipeline class (here weightless) registered with ``register_pipeline_class``;
3. a family that runs the operation with that pipeline, registered with ``register_family``.

:func:`register` does all three; it runs in the driver and, through Ray's
``worker_process_setup_hook``, in every Ray worker. Planning, shards, the runner's batching, PNGs,
per-row metrics, the gate and the registry need no change.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar, Literal

import torch
from diffusers import DiffusionPipeline
from PIL import Image
from pydantic import Field

from augflow.models.families.base import Computed, ModelContext
from augflow.models.families.common import present
from augflow.models.images import pil_to_tensor
from augflow.models.loading import register_pipeline_class
from augflow.models.runner import register_family
from augflow.schemas.errors import ModelLoadError
from augflow.schemas.records import WorkItem
from augflow.schemas.request import OperationSpec, register_operation


class GrayscaleOp(OperationSpec):
    """Luminance of every input, contrast scaled by ``gain`` around mid-grey."""

    kind: Literal["grayscale"] = "grayscale"
    gain: float = Field(default=1.0, gt=0.0, le=4.0)
    # size_rule "source" and faithfulness "same_size" are the OperationSpec defaults


class GrayscalePipeline(DiffusionPipeline):
    """A weightless 'model': ITU-R 601 luminance, replicated to three channels."""

    def __init__(self, luma: str = "bt601") -> None:
        super().__init__()
        self.register_to_config(luma=luma)  # a pipeline folder needs a config to save

    def __call__(self, images: torch.Tensor, gain: float = 1.0) -> torch.Tensor:
        w = torch.tensor([0.299, 0.587, 0.114], dtype=images.dtype).view(1, 3, 1, 1)
        y = (images * w).sum(dim=1, keepdim=True) * gain
        return y.clamp(-1.0, 1.0).repeat(1, 3, 1, 1)


class GrayscaleFamily:
    name: ClassVar[str] = "grayscale"
    summary: ClassVar[str] = "grayscale with GrayscalePipeline"

    @classmethod
    def matches(cls, pipeline: Any) -> bool:
        return isinstance(pipeline, GrayscalePipeline)

    def __init__(self, ctx: ModelContext) -> None:
        self.ctx = ctx
        self.pipe: Any = ctx.pipeline
        self.steps: int = 1

    def check(self) -> None:
        if not isinstance(self.ctx.op, GrayscaleOp):
            raise ModelLoadError(f"{self.ctx.model_id!r} only does 'grayscale'")

    def expected_size(self, source_size: tuple[int, int] | None) -> tuple[int, int]:
        return self.ctx.op.output_size((0, 0), source_size)

    def compute(
        self,
        items: Sequence[WorkItem],
        sources: Sequence[Image.Image | None],
        generators: list[torch.Generator],
    ) -> Computed:
        op = self.ctx.op
        gain = op.gain if isinstance(op, GrayscaleOp) else 1.0  # check() refused anything else
        srcs = present(sources)
        grey_refs = [s.convert("L").convert("RGB") for s in srcs]
        return Computed(self.pipe(pil_to_tensor(srcs), gain=gain), list(grey_refs))


def register() -> None:
    """Make this process know the operation, the pipeline class and the family (idempotent)."""
    register_operation(GrayscaleOp)
    register_pipeline_class("GrayscalePipeline", GrayscalePipeline)
    register_family(GrayscaleFamily)
