"""Helpers the families share: PIL <-> [0, 1] tensors, padding, per-item masks, sizes, steps."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from augflow.models.families.base import ModelContext, OperationSpec
from augflow.models.tiling import pad_to, round_up
from augflow.schemas.errors import ModelLoadError, RequestError


def to_unit(images: Sequence[Image.Image]) -> torch.Tensor:
    """Same-size RGB images -> float32 (B, 3, H, W) in [0, 1] (what diffusers' image processors
    take without guessing the range)."""
    arr = np.stack([np.asarray(im.convert("RGB"), dtype=np.float32) for im in images])
    return torch.from_numpy(arr).permute(0, 3, 1, 2) / 255.0


def pad_multiple(x: torch.Tensor, multiple: int) -> torch.Tensor:
    """Reflect-pad (B, C, H, W) at the bottom/right so both sides are multiples of ``multiple``:
    the VAE and UNet need them, and cropping the padding off afterwards keeps the exact size
    (resizing, which the pipelines would otherwise do, changes the picture)."""
    h, w = x.shape[-2:]
    return pad_to(x, round_up(h, multiple), round_up(w, multiple))


def generator_for(device: str, seed: int, salt: int = 0) -> torch.Generator:
    # distinct, reproducible streams per (image, tile); the multiplier is a large odd constant so
    # neighbouring seeds do not collide after salting
    return torch.Generator(device).manual_seed((seed + salt * 0x9E3779B97F4A7C15) % (2**63))


def any_to_mask(img: Image.Image, size: tuple[int, int]) -> Image.Image:
    """A mask image as single-channel L at ``size`` (nearest: a mask is a region, not a picture)."""
    m = img.convert("L")
    if m.size != size:
        m = m.resize(size, Image.Resampling.NEAREST)
    return m


def cell_bytes(value: Any) -> bytes | None:
    """The bytes of a Parquet image cell (struct {bytes, path} or raw binary)."""
    data = value.get("bytes") if isinstance(value, dict) else value
    return data or None


def present(sources: Sequence[Image.Image | None]) -> list[Image.Image]:
    """The sources of a non-generate micro-batch, which the runner guarantees are all there."""
    out = [s for s in sources if s is not None]
    if len(out) != len(sources):
        raise ValueError("an item of this operation has no source image")
    return out


def output_size(
    op: OperationSpec, native: tuple[int, int], source_size: tuple[int, int] | None
) -> tuple[int, int]:
    """(w, h) of an output: the model's native size for generate/img2img, the source size for
    denoise/inpaint, ``factor`` times it for upscale (the operation's own size rule)."""
    return op.output_size(native, source_size)


# --- steps -----------------------------------------------------------------------------------------


def call_default_steps(pipe: Any) -> int:
    """``num_inference_steps``' default in the pipeline class's ``__call__`` (DDPMPipeline 1000,
    DDIMPipeline 50, StableDiffusionPipeline 50, ...): what the model's authors run it with."""
    param = inspect.signature(type(pipe).__call__).parameters.get("num_inference_steps")
    default = None if param is None else param.default
    if not isinstance(default, int) or isinstance(default, bool) or default < 1:
        raise ModelLoadError(
            f"{type(pipe).__name__} has no default number of inference steps; set `steps` in "
            "the request"
        )
    return default


def resolve_steps(ctx: ModelContext, pipe: Any) -> int:
    """The request's ``steps``, or ``pipe``'s own default when the request leaves it unset."""
    return ctx.request.steps if ctx.request.steps is not None else call_default_steps(pipe)


def check_training_timesteps(ctx: ModelContext, steps: int, scheduler: Any) -> None:
    """Refuse more sampling steps than the scheduler has training timesteps."""
    t_train = int(scheduler.config.num_train_timesteps)
    if steps > t_train:
        origin = "" if ctx.request.steps is not None else " (the model's default; set `steps`)"
        raise RequestError(
            "steps", f"{steps}{origin} exceeds the model's {t_train} training timesteps"
        )


def unsupported(ctx: ModelContext, does: str) -> ModelLoadError:
    """The error for an operation a recognised pipeline cannot do; ``does`` says what it can."""
    return ModelLoadError(
        f"model {ctx.model_id!r}: pipeline class {type(ctx.pipeline).__name__} is not supported "
        f"for operation {ctx.op.kind!r} yet; it does {does}"
    )


def run_padded(
    x: torch.Tensor, multiple: int, fn: Callable[[torch.Tensor], torch.Tensor]
) -> torch.Tensor:
    """Run ``fn`` on (B, C, H, W) ``x`` padded at the bottom/right to a size the UNet accepts
    (sides multiples of ``multiple``), then crop the result back to H x W."""
    h, w = x.shape[-2:]
    ph, pw = (-h) % multiple, (-w) % multiple
    if ph == 0 and pw == 0:
        return fn(x)
    # reflect needs the pad smaller than the side; tiny images fall back to edge replication
    mode = "reflect" if ph < h and pw < w else "replicate"
    xp = F.pad(x, (0, pw, 0, ph), mode=mode)
    return fn(xp)[..., :h, :w]
