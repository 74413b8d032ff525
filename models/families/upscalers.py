"""Dedicated super-resolution pipelines, with diffusion tiling for large inputs.

pipeline                              factor  strength maps to
StableDiffusionUpscalePipeline        x4      noise_level = round(100 * strength) (capped at the
                                              model's max_noise_level); 0.2 is diffusers' default
StableDiffusionLatentUpscalePipeline  x2      (unused: the model has no noise-level knob)
LDMSuperResolutionPipeline            x4      (unused)

Tiling: an input larger than ``operation.tile`` low-resolution pixels on a side (default: the
model's :data:`DEFAULT_TILES`) is cut into overlapping tiles (``operation.tile_overlap`` px,
default tile // 8), each tile is upscaled on its own (tiles batched, each with its own
generator) and the results are blended with raised-cosine ramps (:mod:`augflow.models.tiling`),
so the UNet and the VAE only ever see one tile's worth of pixels. The VAE's own tiling is also
enabled, for tiles whose decode alone would be large. See diffusers#1434 and #9740 for the
whole-image x4 allocations this avoids.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any, ClassVar

import torch
from PIL import Image

from augflow.models.families.base import Computed, ModelContext
from augflow.models.families.common import (
    check_training_timesteps,
    generator_for,
    pad_multiple,
    present,
    resolve_steps,
    to_unit,
)
from augflow.models.speed import is_cuda_oom, release_cuda_memory
from augflow.models.tiling import ramp_window, round_up, tile_starts
from augflow.schemas.errors import ModelLoadError, RequestError
from augflow.schemas.records import WorkItem
from augflow.schemas.request import UpscaleOp

log = logging.getLogger(__name__)

#: Default tile side in low-resolution pixels: what each model was trained around (x4: 128 -> 512).
DEFAULT_TILES = {
    "StableDiffusionUpscalePipeline": 128,
    "StableDiffusionLatentUpscalePipeline": 256,
    "LDMSuperResolutionPipeline": 128,
}
UPSCALER_CLASSES = tuple(DEFAULT_TILES)


def is_upscaler(pipe: Any) -> bool:
    return type(pipe).__name__ in UPSCALER_CLASSES


class UpscalerFamily:
    name: ClassVar[str] = "upscaler"
    summary: ClassVar[str] = "upscale with " + ", ".join(UPSCALER_CLASSES)

    @classmethod
    def matches(cls, pipeline: Any) -> bool:
        return is_upscaler(pipeline)

    def __init__(self, ctx: ModelContext) -> None:
        self.ctx = ctx
        self.pipe: Any = ctx.pipeline
        self.op = ctx.op
        self.request = ctx.request
        self.cls_name = type(self.pipe).__name__
        if self.cls_name == "LDMSuperResolutionPipeline":
            self.factor = 2 ** (len(self.pipe.vqvae.config.block_out_channels) - 1)
            self.multiple = 8
        elif self.cls_name == "StableDiffusionLatentUpscalePipeline":
            self.factor = 2
            self.multiple = max(8, int(self.pipe.vae_scale_factor))  # the VAE encodes the input
        else:
            self.factor = int(self.pipe.vae_scale_factor)
            self.multiple = 8
        op = self.op if isinstance(self.op, UpscaleOp) else None
        tile = op.tile if op is not None and op.tile is not None else DEFAULT_TILES[self.cls_name]
        self.tile = max(self.multiple, round_up(tile, self.multiple))
        overlap = op.tile_overlap if op is not None else None
        self.overlap = overlap if overlap is not None else max(2, self.tile // 8)
        #: tiles of one image per pipeline call; a CUDA out-of-memory error halves it for good
        self.tile_batch = ctx.micro_batch
        self.steps: int = resolve_steps(ctx, self.pipe)
        vae = getattr(self.pipe, "vae", None)
        if vae is not None and hasattr(vae, "enable_tiling"):
            vae.enable_tiling()

    def check(self) -> None:
        if not isinstance(self.op, UpscaleOp):
            raise ModelLoadError(
                f"model {self.ctx.model_id!r} is a {self.cls_name} (an x{self.factor} "
                f"upscaler); it only does operation 'upscale', not {self.op.kind!r}"
            )
        if self.op.factor != self.factor:
            raise RequestError(
                "operation.factor",
                f"model {self.ctx.model_id!r} ({self.cls_name}) upscales x{self.factor}, not "
                f"x{self.op.factor}; set factor: {self.factor}",
            )
        check_training_timesteps(self.ctx, self.steps, self.pipe.scheduler)

    def expected_size(self, source_size: tuple[int, int] | None) -> tuple[int, int]:
        if source_size is None:
            raise ValueError("operation 'upscale' needs the source size")
        return source_size[0] * self.factor, source_size[1] * self.factor

    # --- the call ----------------------------------------------------------------------------

    def compute(
        self,
        items: Sequence[WorkItem],
        sources: Sequence[Image.Image | None],
        generators: list[torch.Generator],
    ) -> Computed:
        srcs = present(sources)
        x = to_unit(srcs)
        h, w = x.shape[-2:]
        if h <= self.tile and w <= self.tile:
            y = self.upscale(pad_multiple(x, self.multiple), generators)
        else:
            y = torch.cat([self.tiled(x[i : i + 1], it.seed) for i, it in enumerate(items)], dim=0)
        f = self.factor
        return Computed(y[..., : h * f, : w * f].float() * 2 - 1, list(srcs))

    def upscale(self, x: torch.Tensor, gens: list[torch.Generator]) -> torch.Tensor:
        """(N, 3, h, w) in [0, 1], sides multiples of ``multiple`` -> (N, 3, h*f, w*f) in [0, 1]."""
        steps = self.steps
        gs = self.request.guidance_scale
        dev = self.ctx.device
        if self.cls_name == "LDMSuperResolutionPipeline":
            out = self.pipe(
                image=(x * 2 - 1).to(dev),
                num_inference_steps=steps,
                generator=gens,
                eta=0.0,
                output_type="pt",
            )
            return out.images.float()
        # no prompt: classifier-free guidance would only double the work, so it is off unless
        # the request asks for a guidance scale
        kw: dict[str, Any] = {"guidance_scale": 0.0 if gs is None else gs}
        if self.cls_name == "StableDiffusionUpscalePipeline" and isinstance(self.op, UpscaleOp):
            kw["noise_level"] = min(
                int(self.pipe.config.max_noise_level), round(100 * self.op.strength)
            )
        out = self.pipe(
            prompt=[""] * x.shape[0],
            image=x.to(dev),
            num_inference_steps=steps,
            generator=gens,
            output_type="pt",
            **kw,
        )
        return out.images.float()

    def tiled(self, x: torch.Tensor, seed: int) -> torch.Tensor:
        """Upscale one image (1, 3, h, w) tile by tile; returns (1, 3, h*f, w*f) on the CPU."""
        f, m = self.factor, self.multiple
        xp = pad_multiple(x, m)
        hp, wp = xp.shape[-2:]
        th, tw = min(self.tile, hp), min(self.tile, wp)
        ov = min(self.overlap, th - 1, tw - 1)
        boxes = [(y0, x0) for y0 in tile_starts(hp, th, ov) for x0 in tile_starts(wp, tw, ov)]
        acc = torch.zeros(3, hp * f, wp * f)
        wsum = torch.zeros(hp * f, wp * f)
        batch = max(1, min(self.tile_batch, len(boxes)))
        k = 0
        while k < len(boxes):
            chunk = boxes[k : k + batch]
            tiles = torch.cat([xp[:, :, y0 : y0 + th, x0 : x0 + tw] for y0, x0 in chunk])
            gens = [generator_for(self.ctx.device, seed, k + j + 1) for j in range(len(chunk))]
            try:
                out = self.upscale(tiles, gens).cpu()
            except Exception as exc:
                if not is_cuda_oom(exc) or batch == 1:
                    raise
                batch = self.tile_batch = max(1, batch // 2)
                log.warning("CUDA out of memory upscaling tiles; tile batch now %d", batch)
                release_cuda_memory()
                continue
            for (y0, x0), r in zip(chunk, out, strict=True):
                wy = ramp_window(th * f, ov * f, y0 > 0, y0 + th < hp)
                wx = ramp_window(tw * f, ov * f, x0 > 0, x0 + tw < wp)
                wt = (wy[:, None] * wx[None, :]).float()
                ys, xs = slice(y0 * f, (y0 + th) * f), slice(x0 * f, (x0 + tw) * f)
                acc[:, ys, xs] += r * wt
                wsum[ys, xs] += wt
            k += len(chunk)
        return (acc / wsum).unsqueeze(0)
