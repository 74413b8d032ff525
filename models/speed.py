"""Speed settings of a loaded pipeline: attention kernel, memory format, compile, micro-batches.

Every setting that can change output bytes comes from the request's ``compute`` section (hashed,
so two runs that differ here are two versions); this module only resolves its defaults per device:

``micro_batch``    images per model call; 1 on CPU (bit-identical to computing each image alone),
                   8 on CUDA, where batching is most of the speed. A CUDA out-of-memory error
                   halves it for the rest of the actor's life.
``channels_last``  NHWC memory format of the convolution-heavy components; on for CUDA, off for
                   CPU (where NHWC convolutions are usually slower and only change bytes).
``compile``        ``torch.compile`` backend of the UNet (``inductor``, or ``eager`` for dynamo
                   tracing only, which the CPU tests use); off unless named.

The attention processor (SDPA) and VAE slicing do not change bytes and are always applied.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import torch

from augflow.schemas.request import ComputeSpec

log = logging.getLogger(__name__)

#: Components that are convolution-heavy and worth NHWC / compiling.
CONV_COMPONENTS = ("unet", "vae", "vqvae")

#: Images per model call when ``compute.micro_batch`` is unset.
DEFAULT_MICRO_BATCH = {"cpu": 1, "cuda": 8}


@dataclass(frozen=True)
class SpeedOptions:
    micro_batch: int
    channels_last: bool
    compile_backend: str | None  # None: no torch.compile

    @classmethod
    def resolve(cls, compute: ComputeSpec, device: str) -> SpeedOptions:
        """``compute`` with its unset fields filled by the defaults of ``device``."""
        cuda = device.startswith("cuda")
        micro = compute.micro_batch
        if micro is None:
            micro = DEFAULT_MICRO_BATCH["cuda" if cuda else "cpu"]
        channels_last = compute.channels_last if compute.channels_last is not None else cuda
        return cls(micro_batch=micro, channels_last=channels_last, compile_backend=compute.compile)


def attention_kernels(module: Any) -> set[str]:
    """Class names of the attention processors of a diffusers model (empty if it has none)."""
    procs = getattr(module, "attn_processors", None)
    if not procs:
        return set()
    return {type(p).__name__ for p in procs.values()}


def apply_speedups(pipe: Any, opts: SpeedOptions) -> dict[str, Any]:
    """Apply ``opts`` to ``pipe`` in place (once per actor); return what was done, for logs."""
    done: dict[str, Any] = {}
    unet = getattr(pipe, "unet", None)
    # diffusers >= 0.2x picks AttnProcessor2_0 (torch SDPA: flash / memory-efficient kernels) by
    # default; an older processor here would mean a checkpoint forced one, so it is reset.
    kernels = attention_kernels(unet)
    if (
        unet is not None
        and "AttnProcessor" in kernels
        and hasattr(torch.nn.functional, "scaled_dot_product_attention")
    ):
        from diffusers.models.attention_processor import AttnProcessor2_0

        unet.set_attn_processor(AttnProcessor2_0())
        kernels = attention_kernels(unet)
    done["attention"] = sorted(kernels)
    if opts.channels_last:
        for name in CONV_COMPONENTS:
            mod = getattr(pipe, name, None)
            if isinstance(mod, torch.nn.Module):
                # Module.to takes memory_format at run time; torch's stub overloads leave it out
                mod.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        done["channels_last"] = True
    vae = getattr(pipe, "vae", None)
    if vae is not None and hasattr(vae, "enable_slicing"):
        # decode one image at a time: the VAE decoder's activations at full resolution are the
        # peak of a batched SD call, and slicing costs almost nothing in speed
        vae.enable_slicing()
        done["vae_slicing"] = True
    if opts.compile_backend is not None and isinstance(unet, torch.nn.Module):
        # shapes are fixed per actor (one request, one size), so no dynamic shapes; the compiled
        # graph is built on the first call and reused for every later batch of that size
        pipe.unet = torch.compile(unet, backend=opts.compile_backend, dynamic=False)
        done["compile"] = opts.compile_backend
    log.info("pipeline speed settings: %s", done)
    return done


def is_cuda_oom(exc: BaseException) -> bool:
    return isinstance(exc, torch.cuda.OutOfMemoryError)


def release_cuda_memory() -> None:
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
