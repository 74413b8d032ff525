"""Helpers the families share: PIL <-> [0, 1] tensors, padding to a multiple, per-item masks."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from PIL import Image

from augflow.models.tiling import pad_to, round_up


def to_unit(images: list[Image.Image]) -> torch.Tensor:
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


def output_size(
    op: Any, native: tuple[int, int], source_size: tuple[int, int] | None
) -> tuple[int, int]:
    """(w, h) of an output: the model's native size for generate/img2img, the source size for
    denoise/inpaint, ``factor`` times it for upscale."""
    if op.kind in ("generate", "img2img"):
        return native
    if source_size is None:
        raise ValueError(f"operation {op.kind!r} needs the source size")
    w, h = source_size
    if op.kind == "upscale":
        return w * op.factor, h * op.factor
    return w, h
