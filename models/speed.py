"""Speed settings of a loaded pipeline: attention kernel, memory format, compile, micro-batches.

Every setting that can change output bytes comes from the request's ``compute`` section (hashed,
so two runs that differ here are two versions); this module only resolves its defaults per device:

``micro_batch``    images per model call. CUDA: 8, where batching is most of the speed (a CUDA
                   out-of-memory error halves it for the rest of the actor's life). CPU: enough
                   images to give the UNet ~16K pixels per call (``CPU_PIXELS_PER_CALL``), 1 to
                   16: small UNets spend most of a one-image call in per-layer Python overhead
                   (32x32: 2.3 images/s alone, 5.7 in calls of 16, one thread), big ones gain
                   nothing and only use more memory. The default depends only on the model and
                   the request, never on the machine's load or worker count, so it is as
                   deterministic as an explicit value; an image's batch companions are fixed by
                   its shard (see :mod:`augflow.models.runner`).
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

_COMPILED = "_augflow_compiled"

#: Components that are convolution-heavy and worth NHWC / compiling.
CONV_COMPONENTS = ("unet", "vae", "vqvae")

#: Images per model call when ``compute.micro_batch`` is unset (CPU: see ``cpu_micro_batch``).
DEFAULT_MICRO_BATCH = {"cpu": 4, "cuda": 8}

#: CPU default: UNet input pixels per model call the micro-batch aims at (measured on the 2-core
#: dev box, one torch thread: a 32x32 pixel UNet goes 2.3 -> 3.8 -> 4.8 -> 5.7 images/s at 1, 4,
#: 8, 16 images per call and no further at 32; a 64x64 one levels off at 4).
CPU_PIXELS_PER_CALL = 16384
CPU_MAX_MICRO_BATCH = 16


def cpu_micro_batch(unet_pixels: int | None) -> int:
    """The CPU default micro-batch for a UNet that sees ``unet_pixels`` pixels per image."""
    if not unet_pixels or unet_pixels <= 0:
        return DEFAULT_MICRO_BATCH["cpu"]
    return max(1, min(CPU_MAX_MICRO_BATCH, CPU_PIXELS_PER_CALL // unet_pixels))


def unet_pixels(pipe: Any, image_size: int | None) -> int | None:
    """Pixels per image the pipeline's UNet works on (latent pixels for latent models), from its
    config and the request's ``image_size``; None when the pipeline has no UNet config."""
    cfg = getattr(getattr(pipe, "unet", None), "config", None)
    size = getattr(cfg, "sample_size", None)
    if size is None:
        return None
    h, w = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
    if image_size:
        latent = getattr(pipe, "vae", None) is not None or getattr(pipe, "vqvae", None) is not None
        scale = int(getattr(pipe, "vae_scale_factor", 8)) if latent else 1
        h = w = max(1, image_size // scale)
    return int(h) * int(w)


@dataclass(frozen=True)
class SpeedOptions:
    micro_batch: int
    channels_last: bool
    compile_backend: str | None  # None: no torch.compile

    @classmethod
    def resolve(
        cls, compute: ComputeSpec, device: str, unet_pixels: int | None = None
    ) -> SpeedOptions:
        """``compute`` with its unset fields filled by the defaults of ``device`` (and, on CPU, of
        a UNet working on ``unet_pixels`` pixels per image)."""
        cuda = device.startswith("cuda")
        micro = compute.micro_batch
        if micro is None:
            micro = DEFAULT_MICRO_BATCH["cuda"] if cuda else cpu_micro_batch(unet_pixels)
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
        # graph is built on the first call and reused for every later batch of that size. A warm
        # actor hands the same pipeline to its next request, which gets the same compiled module
        # (kept in the module's __dict__: as an attribute it would become a submodule).
        compiled = unet.__dict__.get(_COMPILED)
        if compiled is None:
            compiled = torch.compile(unet, backend=opts.compile_backend, dynamic=False)
            unet.__dict__[_COMPILED] = compiled
        pipe.unet = compiled
        done["compile"] = opts.compile_backend
    log.info("pipeline speed settings: %s", done)
    return done


def uncompiled(pipe: Any) -> None:
    """Put back the plain UNet a previous :func:`apply_speedups` compiled, so a pipeline loaded
    for one request can be checked and sped up again for the next (families check module
    classes, which a compiled wrapper hides)."""
    original = getattr(getattr(pipe, "unet", None), "_orig_mod", None)
    if isinstance(original, torch.nn.Module):
        pipe.unet = original


def is_cuda_oom(exc: BaseException) -> bool:
    return isinstance(exc, torch.cuda.OutOfMemoryError)


def release_cuda_memory() -> None:
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
