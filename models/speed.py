"""GPU speed settings of a loaded pipeline: attention kernel, memory format, compile, batching.

Everything here is on by default where it helps and is harmless on CPU; the environment can
override it per actor (Ray workers inherit the driver's environment):

``AUGFLOW_COMPILE``          unset/``0``: off; ``1``: ``torch.compile`` (inductor); any other value
                             names a dynamo backend (``eager`` is what the CPU tests use).
``AUGFLOW_CHANNELS_LAST``    ``1``/``0``; default on for CUDA, off for CPU (where NHWC convolutions
                             are usually slower and would change output bytes for no gain).
``AUGFLOW_BATCH_INVARIANT``  ``1``: run every image on its own (bit-identical whatever
                             ``execution.batch_size`` is); ``0``: batch same-size images.
                             Default: on for CPU, off for CUDA, where batching is the throughput.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any

import torch

log = logging.getLogger(__name__)

#: Components that are convolution-heavy and worth NHWC / compiling.
CONV_COMPONENTS = ("unet", "vae", "vqvae")


def _flag(name: str, default: bool) -> bool:
    raw = os.environ.get(name, "").strip().lower()
    if raw in ("1", "true", "yes", "on"):
        return True
    if raw in ("0", "false", "no", "off"):
        return False
    return default


@dataclass(frozen=True)
class SpeedOptions:
    batch_invariant: bool
    channels_last: bool
    compile_backend: str | None  # None: no torch.compile

    @classmethod
    def for_device(cls, device: str, batch_invariant: bool | None = None) -> SpeedOptions:
        cuda = device.startswith("cuda")
        if batch_invariant is None:
            batch_invariant = _flag("AUGFLOW_BATCH_INVARIANT", not cuda)
        raw = os.environ.get("AUGFLOW_COMPILE", "").strip()
        backend = None if raw.lower() in ("", "0", "false", "off", "no") else raw
        if backend is not None and backend.lower() in ("1", "true", "on", "yes"):
            backend = "inductor"
        return cls(
            batch_invariant=batch_invariant,
            channels_last=_flag("AUGFLOW_CHANNELS_LAST", cuda),
            compile_backend=backend,
        )


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
        kernels
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
                mod.to(memory_format=torch.channels_last)
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


#: Rough activation memory of one image per pixel the UNet sees, for fp16 with SDPA attention
#: (an SD-1.5 step at 64x64 latents needs about 1 GiB an image). An over-estimate only costs speed;
#: an under-estimate is caught by the out-of-memory back-off.
BYTES_PER_UNET_PIXEL = 256 * 1024
MAX_AUTO_BATCH = 64


def auto_batch_size(unet_pixels: int, free_bytes: int, share: float = 0.5) -> int:
    """A starting batch for CUDA when the request did not set ``execution.batch_size``.

    ``unet_pixels`` is the spatial size the UNet works at (latent pixels for latent models);
    ``share`` of the free GPU memory is budgeted for activations, the rest left for weights, the
    VAE and the allocator's slack.
    """
    per_image = max(1, unet_pixels) * BYTES_PER_UNET_PIXEL
    return max(1, min(MAX_AUTO_BATCH, int(free_bytes * share) // per_image))


def free_cuda_bytes() -> int:
    import torch

    free, _total = torch.cuda.mem_get_info()
    return int(free)
