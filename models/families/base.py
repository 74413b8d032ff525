"""The model-family seam: what one kind of diffusers pipeline provides to the runner.

Loading is shared (:func:`augflow.models.loading.load_pipeline`). A family adapts one kind of
loaded pipeline to augflow's operations: it checks the request against the pipeline, says what
size each output will have, and computes a micro-batch into images plus the references their
faithfulness is measured against. Everything around that — picking the family, grouping items by
size, micro-batches, CUDA out-of-memory back-off, isolating a failing item, PNG encoding and the
per-row metrics — is the runner's (:mod:`augflow.models.runner`), once for every family.

The runner tries its registered family classes in order and builds the first whose ``matches``
accepts the pipeline: ``family_cls(context)``, then ``check()`` once, then ``compute`` per
micro-batch.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

import torch
from PIL import Image

from augflow.schemas.records import WorkItem
from augflow.schemas.request import (
    AugmentRequest,
    DenoiseOp,
    GenerateOp,
    Img2ImgOp,
    InpaintOp,
    UpscaleOp,
)

OperationSpec = GenerateOp | Img2ImgOp | DenoiseOp | UpscaleOp | InpaintOp

#: Reads the bytes behind a URI (a mask image, a Parquet file of masks). Injected by the caller
#: (the shard worker passes one built on its storage layer), so models/ never imports tasks/.
UriReader = Callable[[str], bytes]


@dataclass(frozen=True)
class ModelContext:
    """What a family is built from: the request and the pipeline loaded for it."""

    request: AugmentRequest
    pipeline: Any
    model_id: str
    device: str
    dtype: torch.dtype
    #: images per model call (resolved ``compute.micro_batch``); families that batch internally
    #: (tiles of one image) use it as their starting batch too
    micro_batch: int
    read_uri: UriReader | None = None

    @property
    def op(self) -> OperationSpec:
        return self.request.operation

    @property
    def torch_device(self) -> torch.device:
        return torch.device(self.device)


@dataclass(frozen=True)
class Computed:
    """A micro-batch's result: ``images`` (B, 3, H, W) in [-1, 1] and, per image, the picture
    its faithfulness is measured against (None: not measured, e.g. generate), and for inpaint the
    mask each image was painted under (white = repainted), for the effect checks."""

    images: torch.Tensor
    references: list[Image.Image | None]
    masks: list[Image.Image | None] | None = None


class Family(Protocol):
    """One kind of pipeline behind augflow's operations."""

    #: short name, recorded in logs and used by tests (``unet``, ``sr3``, ``text-latent``, ...)
    name: ClassVar[str]
    #: what the family runs, for the "no family supports this pipeline" error
    summary: ClassVar[str]
    #: the pipeline object actually called (speed-ups are applied to it)
    pipe: Any
    #: effective sampling steps: ``request.steps``, or the model's own default when unset
    steps: int

    @classmethod
    def matches(cls, pipeline: Any) -> bool:
        """Whether this family runs ``pipeline`` (looked at before the request is)."""
        ...

    def __init__(self, ctx: ModelContext) -> None: ...

    def check(self) -> None:
        """Refuse a request this pipeline cannot serve (RequestError / ModelLoadError), once."""
        ...

    def expected_size(self, source_size: tuple[int, int] | None) -> tuple[int, int]:
        """Output (w, h) for an item whose source is ``source_size`` (None for generate)."""
        ...

    def compute(
        self,
        items: Sequence[WorkItem],
        sources: Sequence[Image.Image | None],
        generators: list[torch.Generator],
    ) -> Computed:
        """Compute one micro-batch; ``generators[i]`` is item i's own seeded generator.

        Sources of non-generate items are never None (the runner quarantines those first) and,
        for operations whose output size follows the source, all have the same size.
        """
        ...
