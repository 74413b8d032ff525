"""The model callable: a request's pipeline loaded once, a batch of work items in, PNGs + metrics out.

No Prefect, no Ray: a Ray actor wraps one :class:`AugmentModel`, tests call it directly.

Dispatch: the loaded pipeline goes to the first family class (:mod:`augflow.models.families`)
whose ``matches`` accepts it. The built-ins are tried in the order sr3, upscaler, text-latent,
unet; :func:`register_family` puts another family in front of them.

Batching is the same for every family and lives here. The items of one call are grouped by
output size (generate/img2img: one group; otherwise by source size) and each group runs in
consecutive micro-batches of ``compute.micro_batch`` items, in call order, so an image's batch
companions depend only on the request and its shard, never on how many workers there are. Every
image has its own ``torch.Generator`` seeded from ``WorkItem.seed``, so its noise never depends on
its companions; its arithmetic can (convolutions pick other algorithms and reduction orders for
other batch shapes: ~1e-6 between a batch of 4 and four batches of 1 on CPU, enough to flip a
rounded pixel after many steps), which is why the micro-batch is a hashed request field; its
default depends only on the device kind and the model (see :mod:`augflow.models.speed`).

A CUDA out-of-memory error halves the micro-batch (for the rest of the actor's life) and retries;
any other error in a micro-batch retries it item by item, so one bad item becomes one failed
output instead of failing the shard.

Encoding overlaps compute: a micro-batch's images leave the device as uint8 arrays (converted on
the device; a CPU batch is converted on the encode threads instead), and their PNG encoding and
per-row metrics run on ``encode_threads`` CPU threads while the next micro-batch computes
(:meth:`AugmentModel.submit` returns before they finish). On a GPU that keeps the device
from waiting for the CPU on every batch; 0 threads (the CPU default, where compute and encoding
share the same cores) encodes inline. Encoding never changes a byte: same arrays, same encoder.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image

from augflow.models.effects import (
    EFFECT_NAMES,
    EFFECT_OPERATIONS,
    effect_metrics,
)
from augflow.models.families.base import Family, ModelContext, UriReader
from augflow.models.families.sr3 import SR3Family
from augflow.models.families.text import TextLatentFamily
from augflow.models.families.unet import UNetFamily
from augflow.models.families.upscalers import UpscalerFamily
from augflow.models.images import chw_to_uint8, host_float_images, tensor_to_uint8
from augflow.models.loading import LoadedPipeline, load_pipeline
from augflow.models.metrics import compute_metrics
from augflow.models.png import encode_png_array
from augflow.models.speed import (
    SpeedOptions,
    apply_speedups,
    is_cuda_oom,
    release_cuda_memory,
    uncompiled,
    unet_pixels,
)
from augflow.schemas.errors import ModelLoadError
from augflow.schemas.records import WorkItem
from augflow.schemas.request import AugmentRequest

log = logging.getLogger(__name__)

#: Families tried in order; the first whose ``matches`` accepts the pipeline runs it. SR3 comes
#: before unet because an SR3Pipeline is also a pixel UNet2DModel with a scheduler.
_families: list[type[Family]] = [SR3Family, UpscalerFamily, TextLatentFamily, UNetFamily]


def register_family(family_cls: type[Family]) -> None:
    """Try ``family_cls`` before every family registered so far (idempotent).

    A process that loads a pipeline class augflow does not ship (registered with
    :func:`augflow.models.loading.register_pipeline_class`) registers its family here too; in a Ray
    cluster, that has to happen in every worker process (e.g. a ``worker_process_setup_hook``).
    """
    if family_cls not in _families:
        _families.insert(0, family_cls)


def registered_families() -> tuple[type[Family], ...]:
    """The family classes in the order they are tried."""
    return tuple(_families)


def family_for(pipeline: Any, model_id: str) -> type[Family]:
    """The first registered family that runs ``pipeline``."""
    for cls in _families:
        if cls.matches(pipeline):
            return cls
    supported = "; ".join(f"{cls.name}: {cls.summary}" for cls in _families)
    raise ModelLoadError(
        f"model {model_id!r}: pipeline class {type(pipeline).__name__} is not supported; "
        f"supported: {supported}"
    )


@dataclass
class ImageOutput:
    """One item's result. ``error`` is set (and png/metrics are None) only when this item failed."""

    png: bytes | None
    metrics: dict[str, Any] | None
    error: str | None = None


class PendingOutputs:
    """The outputs of one :meth:`AugmentModel.submit` call: computed, maybe still encoding."""

    def __init__(self, slots: list[Future[ImageOutput]]) -> None:
        self._slots = slots

    def result(self) -> list[ImageOutput]:
        """Wait for the encodings; one output per item, in call order."""
        return [f.result() for f in self._slots]


def _given(arr: np.ndarray, has_nan: bool) -> tuple[np.ndarray, bool]:
    return arr, has_nan


def _done(out: ImageOutput) -> Future[ImageOutput]:
    f: Future[ImageOutput] = Future()
    f.set_result(out)
    return f


class AugmentModel:
    """Holds one loaded pipeline for one request; call it with batches of work items.

    ``read_uri`` reads the bytes behind a URI for families that need more than the sources (an
    inpainting mask); the caller injects it so models/ never depends on the storage layer.
    ``loaded`` is a pipeline an earlier AugmentModel of the same model, device and compute
    settings loaded (a warm actor serving its next request); None loads ``request.model``.
    ``encode_threads`` > 0 encodes PNGs and metrics on that many threads, overlapping compute.
    """

    def __init__(
        self,
        request: AugmentRequest,
        device: str = "auto",
        *,
        read_uri: UriReader | None = None,
        loaded: LoadedPipeline | None = None,
        encode_threads: int = 0,
    ) -> None:
        self.request = request
        self.op = request.operation
        if loaded is None:
            loaded = load_pipeline(request.model, device)
        else:
            uncompiled(loaded.pipeline)
        #: what was loaded, for a warm actor to hand to the next request of the same model
        self.loaded = loaded
        self.pipeline = loaded.pipeline
        self.model_id = loaded.model_id
        self.model_revision = loaded.revision
        self.scheduler_name = loaded.scheduler_name
        self.device = loaded.device
        self.dtype = loaded.dtype
        self.speed = SpeedOptions.resolve(
            request.compute, self.device, unet_pixels(self.pipeline, request.image_size)
        )
        #: images per model call; halved for good by a CUDA out-of-memory error
        self.micro_batch = self.speed.micro_batch
        family_cls = family_for(self.pipeline, self.model_id)
        self.family: Family = family_cls(
            ModelContext(
                request=request,
                pipeline=self.pipeline,
                model_id=self.model_id,
                device=self.device,
                dtype=self.dtype,
                micro_batch=self.micro_batch,
                read_uri=read_uri,
            )
        )
        self.family.check()
        # after the checks: they look at the real module classes, which compile wraps
        self.speed_settings = apply_speedups(self.family.pipe, self.speed)
        self.speed_settings["micro_batch"] = self.micro_batch
        self._encoder = (
            ThreadPoolExecutor(max_workers=encode_threads, thread_name_prefix="augflow-encode")
            if encode_threads > 0
            else None
        )
        #: when the first micro-batch came off the device (time.time()), for start-up reports
        self.first_batch_done_at: float | None = None

    @property
    def steps(self) -> int:
        """Sampling steps actually run: ``request.steps``, or the model's default when unset."""
        return self.family.steps

    @property
    def task_pipeline(self) -> Any:
        """The pipeline object actually called (for text models: the task variant of the load)."""
        return self.family.pipe

    def expected_size(self, source_size: tuple[int, int] | None) -> tuple[int, int]:
        """Output (w, h) for an item whose source is ``source_size`` (None for generate)."""
        return self.family.expected_size(source_size)

    # --- the call ------------------------------------------------------------------------------

    def __call__(
        self,
        items: Sequence[WorkItem],
        sources: Sequence[Image.Image | None],
        on_batch: Callable[[int], None] | None = None,
    ) -> list[ImageOutput]:
        """Outputs in item order; ``on_batch(n)`` is called after each micro-batch of n items
        (progress reporting)."""
        return self.submit(items, sources, on_batch).result()

    def submit(
        self,
        items: Sequence[WorkItem],
        sources: Sequence[Image.Image | None],
        on_batch: Callable[[int], None] | None = None,
    ) -> PendingOutputs:
        """Compute every item; returns once the device work is done, while PNG encoding and
        metrics may still run on the encode threads (``result()`` waits for them).
        ``on_batch(n)`` is called after each micro-batch of n items leaves the device."""
        if len(items) != len(sources):
            raise ValueError(f"{len(items)} items but {len(sources)} sources")
        op = self.op
        results: list[Future[ImageOutput] | None] = [None] * len(items)
        groups: dict[tuple[int, int] | None, list[int]] = {}
        for i, src in enumerate(sources):
            if op.takes_inputs and src is None:
                results[i] = _done(
                    ImageOutput(None, None, "no source image was given for this item")
                )
                continue
            # outputs of a micro-batch share a size: group by source size unless it is fixed
            key = None if src is None or op.size_rule == "native" else src.size
            groups.setdefault(key, []).append(i)
        for idx in groups.values():
            k = 0
            while k < len(idx):
                # micro_batch is re-read each time: an OOM in this loop lowers it for what follows
                chunk = idx[k : k + self.micro_batch]
                self._run_isolated(chunk, items, sources, results)
                k += len(chunk)
                if on_batch is not None:
                    on_batch(len(chunk))
        return PendingOutputs([r for r in results if r is not None])

    def _run_isolated(
        self,
        idx: list[int],
        items: Sequence[WorkItem],
        sources: Sequence[Image.Image | None],
        results: list[Future[ImageOutput] | None],
    ) -> None:
        """Run a micro-batch; if it fails, retry item by item so one bad item does not sink the
        rest. A CUDA out-of-memory error is not the items' fault: the micro-batch is split in
        halves, ``micro_batch`` lowered, and both halves retried."""
        try:
            outs = self._run_chunk([items[i] for i in idx], [sources[i] for i in idx])
        except Exception as exc:
            if is_cuda_oom(exc) and len(idx) > 1:
                half = (len(idx) + 1) // 2
                self.micro_batch = min(self.micro_batch, half)
                log.warning(
                    "CUDA out of memory with a micro-batch of %d; retrying with %d",
                    len(idx),
                    self.micro_batch,
                )
                del exc  # drops the traceback's references to the failed batch's tensors
                release_cuda_memory()
                self._run_isolated(idx[:half], items, sources, results)
                self._run_isolated(idx[half:], items, sources, results)
                return
            if len(idx) > 1:
                for i in idx:
                    self._run_isolated([i], items, sources, results)
                return
            log.warning("item %s failed in the model: %s", items[idx[0]].row_id, exc)
            results[idx[0]] = _done(ImageOutput(None, None, f"{type(exc).__name__}: {exc}"))
            return
        for i, job in zip(idx, outs, strict=True):
            results[i] = self._encoder.submit(job) if self._encoder else _done(job())

    @torch.inference_mode()
    def _run_chunk(
        self, items: list[WorkItem], sources: list[Image.Image | None]
    ) -> list[Callable[[], ImageOutput]]:
        """Compute one micro-batch; returns one encoding job per item (run inline or on the
        encode threads). Moving the images to host memory is the only wait on the device."""
        gens = [torch.Generator(self.device).manual_seed(it.seed) for it in items]
        computed = self.family.compute(items, sources, gens)
        x = computed.images
        if x.ndim != 4 or x.shape[0] != len(items) or x.shape[1] != 3:
            raise ValueError(
                f"family {self.family.name!r} returned images of shape {tuple(x.shape)}; "
                f"expected ({len(items)}, 3, H, W)"
            )
        pixels: list[Callable[[], tuple[np.ndarray, bool]]]
        if x.device.type == "cpu":
            # the float -> uint8 conversion is host work like the encoding, and runs with it: on
            # the encode threads when there are any, so the compute lock is free sooner
            pixels = [functools.partial(chw_to_uint8, img) for img in host_float_images(x)]
        else:  # on an accelerator the conversion runs there; the copy to the host is the wait
            arrays, nan_flags = tensor_to_uint8(x)
            pixels = [
                functools.partial(_given, a, bad) for a, bad in zip(arrays, nan_flags, strict=True)
            ]
        if self.first_batch_done_at is None:
            self.first_batch_done_at = time.time()
        masks = computed.masks or [None] * len(pixels)
        return [
            functools.partial(
                self._encode,
                pix,
                ref,
                None if src is None else src.size,
                item.row_id,
                mask,
            )
            for pix, ref, src, item, mask in zip(
                pixels, computed.references, sources, items, masks, strict=True
            )
        ]

    def _encode(
        self,
        pixels: Callable[[], tuple[np.ndarray, bool]],
        reference: Image.Image | None,
        source_size: tuple[int, int] | None,
        row_id: str,
        mask: Image.Image | None = None,
    ) -> ImageOutput:
        """PNG bytes and per-row metrics of one computed image (``pixels`` gives its uint8 array
        and whether it had NaN/inf); a failure fails this item only."""
        try:
            arr, has_nan = pixels()
            png = encode_png_array(arr)
            metrics = compute_metrics(
                png,
                faithfulness=self.op.faithfulness,
                expected_size=self.expected_size(source_size),
                has_nan=has_nan,
                min_pixel_std=self.request.quality.min_pixel_std,
                reference=reference,
                pixels=arr,
            )
            metrics.update(self._effects(arr, reference, mask))
        except Exception as exc:
            log.warning("item %s failed to encode: %s", row_id, exc)
            return ImageOutput(None, None, f"{type(exc).__name__}: {exc}")
        return ImageOutput(png, metrics)

    def _effects(
        self, output: np.ndarray, reference: Image.Image | None, mask: Image.Image | None = None
    ) -> dict[str, Any]:
        """The row's effect metrics (models/effects.py), from the image just encoded (PNG is
        lossless), the reference the family returned and, for inpaint, the mask it painted under.
        Null where they do not apply: generate, operations added by plugins, and inpaint by a
        family that did not return its masks. A metric that cannot be computed is null too,
        which the gate's checks count as failing, rather than turning a good output into a
        quarantined one."""
        kind = self.op.kind
        missing = reference is None or (kind == "inpaint" and mask is None)
        if kind not in EFFECT_OPERATIONS or kind == "generate" or missing:
            return dict.fromkeys(EFFECT_NAMES)
        try:
            return effect_metrics(kind, Image.fromarray(output), reference, mask=mask)
        except Exception as exc:  # any failure is "not measured", which the gate reports
            log.warning("effect metrics of a %s row could not be computed: %s", kind, exc)
            return dict.fromkeys(EFFECT_NAMES)
