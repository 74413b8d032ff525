"""Text-conditioned latent diffusion (Stable Diffusion 1.x/2.x, SD-Turbo, SDXL, …).

One loaded checkpoint serves every operation: diffusers' ``AutoPipelineFor*.from_pipe`` builds
the text-to-image, image-to-image or inpainting pipeline of the same family around the *same*
components (no second copy of the weights).

operation   pipeline                           notes
generate    AutoPipelineForText2Image          prompts / class_names+prompt_template, negative
                                               prompt, request.guidance_scale
img2img     AutoPipelineForImage2Image         SDEdit at ``strength``, K variants per source
denoise     AutoPipelineForImage2Image         low strength: ``noise_level / 100`` clamped to
                                               [0.1, 0.6] (a heuristic: latent noise has no exact
                                               pixel-sigma equivalent)
upscale     AutoPipelineForImage2Image         bicubic x factor, then SDEdit at ``strength``; a
                                               dedicated upscaler model is better (upscalers.py)
inpaint     AutoPipelineForInpainting          mask from operation.mask or operation.mask_column

Masks are read through the URI reader the caller injects (``ModelContext.read_uri``): models/
never opens storage itself.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import pyarrow as pa
import pyarrow.parquet as pq
import torch
from PIL import Image, ImageOps

from augflow.models.families.base import Computed, ModelContext
from augflow.models.families.common import (
    any_to_mask,
    cell_bytes,
    check_training_timesteps,
    output_size,
    pad_multiple,
    present,
    resolve_steps,
    to_unit,
)
from augflow.models.images import ImageRejected, decode_image
from augflow.schemas.errors import ModelLoadError, RequestError
from augflow.schemas.records import WorkItem
from augflow.schemas.request import (
    DenoiseOp,
    GenerateOp,
    Img2ImgOp,
    InpaintOp,
    UpscaleOp,
)

DENOISE_STRENGTH_RANGE = (0.1, 0.6)
DEFAULT_SIGMA = 25.0
OPERATIONS = "generate, img2img, denoise, upscale and inpaint"


def is_text_latent(pipe: Any) -> bool:
    from diffusers import UNet2DConditionModel

    return (
        isinstance(getattr(pipe, "unet", None), UNet2DConditionModel)
        and getattr(pipe, "vae", None) is not None
        and getattr(pipe, "text_encoder", None) is not None
    )


def _auto_class(kind: str) -> Any:
    import diffusers

    if kind == "generate":
        return diffusers.AutoPipelineForText2Image
    if kind == "inpaint":
        return diffusers.AutoPipelineForInpainting
    return diffusers.AutoPipelineForImage2Image


class TextLatentFamily:
    name: ClassVar[str] = "text-latent"
    summary: ClassVar[str] = (
        f"{OPERATIONS} with text-conditioned latent pipelines (StableDiffusion*, SDXL)"
    )

    @classmethod
    def matches(cls, pipeline: Any) -> bool:
        return is_text_latent(pipeline)

    def __init__(self, ctx: ModelContext) -> None:
        self.ctx = ctx
        self.op = ctx.op
        self.request = ctx.request
        base = ctx.pipeline
        auto = _auto_class(self.op.kind)
        try:
            # same class -> a new pipeline object over the same modules; otherwise the family's
            # variant for this task (e.g. StableDiffusionImg2ImgPipeline)
            self.pipe: Any = auto.from_pipe(base)
        except (ValueError, KeyError, TypeError) as exc:
            raise ModelLoadError(
                f"model {ctx.model_id!r}: {type(base).__name__} has no "
                f"{self.op.kind!r} variant in diffusers ({auto.__name__}: {exc})"
            ) from None
        if hasattr(self.pipe, "set_progress_bar_config"):
            self.pipe.set_progress_bar_config(disable=True)
        self.vae_scale = int(getattr(base, "vae_scale_factor", 8))
        #: the task variant's own default (its __call__), e.g. 50 for StableDiffusion*
        self.steps: int = resolve_steps(ctx, self.pipe)
        self._mask: Image.Image | None = None
        self._mask_cells: dict[str, Any] = {}

    # --- validation --------------------------------------------------------------------------

    def check(self) -> None:
        op = self.op
        if isinstance(op, GenerateOp) and op.class_labels is not None and op.class_names is None:
            raise RequestError(
                "operation.class_labels",
                f"model {self.ctx.model_id!r} is text-to-image and takes prompts, not label "
                "ids; add class_names (and a prompt_template such as 'a photo of a {label}')",
            )
        strength = self.strength()
        if strength is not None and int(self.steps * strength) < 1:
            field = "operation.noise_level" if op.kind == "denoise" else "operation.strength"
            raise RequestError(
                field,
                f"steps {self.steps} x strength {strength:g} (from {field}) runs no "
                "denoising step; raise steps or " + field.split(".")[1],
            )
        check_training_timesteps(self.ctx, self.steps, self.pipe.scheduler)
        if isinstance(op, InpaintOp):
            if self.ctx.read_uri is None:
                what = f"the mask {op.mask!r}" if op.mask is not None else "mask_column cells"
                raise ModelLoadError(
                    f"model {self.ctx.model_id!r}: inpainting reads {what} from storage, but "
                    "this AugmentModel was built without a URI reader; pass read_uri= (augflow's "
                    "shard worker passes one built on its storage layer)"
                )
            if op.mask is not None:
                self._mask = self._load_mask(op.mask)

    def strength(self) -> float | None:
        op = self.op
        if isinstance(op, Img2ImgOp | UpscaleOp | InpaintOp):
            return float(op.strength)
        if isinstance(op, DenoiseOp):
            lo, hi = DENOISE_STRENGTH_RANGE
            # latent noise has no exact pixel-σ equivalent; unset σ uses a typical 25
            sigma = op.noise_level if op.noise_level is not None else DEFAULT_SIGMA
            return min(hi, max(lo, sigma / 100.0))
        return None

    # --- sizes -------------------------------------------------------------------------------

    def native_size(self) -> tuple[int, int]:
        if self.request.image_size is not None:
            return self.request.image_size, self.request.image_size
        s = self.pipe.unet.config.sample_size
        if isinstance(s, int):
            return s * self.vae_scale, s * self.vae_scale
        return int(s[1]) * self.vae_scale, int(s[0]) * self.vae_scale

    def expected_size(self, source_size: tuple[int, int] | None) -> tuple[int, int]:
        native = self.native_size() if self.op.kind in ("generate", "img2img") else (0, 0)
        return output_size(self.op, native, source_size)

    # --- the call ----------------------------------------------------------------------------

    def compute(
        self,
        items: Sequence[WorkItem],
        sources: Sequence[Image.Image | None],
        generators: list[torch.Generator],
    ) -> Computed:
        op, n = self.op, len(items)
        kw: dict[str, Any] = {
            "num_inference_steps": self.steps,
            "generator": generators,
            "output_type": "pt",
        }
        if self.request.guidance_scale is not None:
            kw["guidance_scale"] = self.request.guidance_scale
        if isinstance(op, GenerateOp | Img2ImgOp | InpaintOp) and op.negative_prompt:
            kw["negative_prompt"] = [op.negative_prompt] * n
        prompts = [it.prompt or "" for it in items]
        if isinstance(op, GenerateOp):
            w, h = self.native_size()
            out = self.pipe(prompt=prompts, height=h, width=w, **kw).images
            return Computed(out.float() * 2 - 1, [None] * n)
        srcs = present(sources)
        if isinstance(op, Img2ImgOp):
            inits = [ImageOps.fit(s, self.native_size(), Image.Resampling.BICUBIC) for s in srcs]
            out = self.pipe(prompt=prompts, image=to_unit(inits), strength=op.strength, **kw)
            return Computed(out.images.float() * 2 - 1, list(inits))
        if isinstance(op, UpscaleOp):
            w, h = srcs[0].size
            f = op.factor
            base = [s.resize((w * f, h * f), Image.Resampling.BICUBIC) for s in srcs]
        else:
            base = srcs
        x = to_unit(base)
        h, w = x.shape[-2:]
        xp = pad_multiple(x, self.vae_scale)
        call: dict[str, Any] = {"image": xp, "strength": self.strength(), **kw}
        if isinstance(op, InpaintOp):
            masks = [self._mask_for(it, s) for it, s in zip(items, srcs, strict=True)]
            m = to_unit([mk.convert("RGB") for mk in masks])[:, :1]
            call["mask_image"] = pad_multiple(m, self.vae_scale)
            call["height"], call["width"] = xp.shape[-2:]
        out = self.pipe(prompt=prompts, **call).images
        return Computed(
            out[..., :h, :w].float() * 2 - 1,
            list(srcs),
            masks=list(masks) if isinstance(op, InpaintOp) else None,
        )

    # --- masks -------------------------------------------------------------------------------

    def _read(self, uri: str) -> bytes:
        if self.ctx.read_uri is None:  # check() refuses inpainting without a reader first
            raise ValueError(f"no URI reader to read {uri}")
        return self.ctx.read_uri(uri)

    def _load_mask(self, uri: str) -> Image.Image:
        try:
            return decode_image(self._read(uri), uri).convert("L")
        except ImageRejected as exc:
            raise RequestError("operation.mask", f"the mask is not a usable image: {exc}") from None
        except Exception as exc:
            raise RequestError(
                "operation.mask", f"cannot read the mask {uri!r}: {type(exc).__name__}: {exc}"
            ) from None

    def _mask_for(self, item: WorkItem, src: Image.Image) -> Image.Image:
        if self._mask is not None:
            return any_to_mask(self._mask, src.size)
        column = self.op.mask_column if isinstance(self.op, InpaintOp) else None
        if item.source_row is None or item.source_uri is None:
            raise ValueError(
                f"operation.mask_column {column!r} needs Parquet inputs; {item.source_id} is a "
                "plain image file (give operation.mask instead)"
            )
        cells = self._mask_cells.get(item.source_uri)
        if cells is None:
            # the whole file is read once and only the mask column decoded; shards are per file,
            # so this happens once per shard
            data = pa.BufferReader(self._read(item.source_uri))
            names = pq.read_schema(data).names
            if column not in names:
                raise ValueError(
                    f"{item.source_uri} has no column {column!r} (operation.mask_column); "
                    f"columns: {', '.join(names)}"
                )
            data.seek(0)
            cells = pq.read_table(data, columns=[column]).column(column)
            self._mask_cells = {item.source_uri: cells}  # one file at a time: shards are per file
        data_bytes = cell_bytes(cells[item.source_row].as_py())
        if data_bytes is None:
            raise ValueError(f"{item.source_uri}#{item.source_row}: empty {column!r} cell")
        return any_to_mask(
            decode_image(data_bytes, f"{item.source_uri}#{item.source_row}"), src.size
        )
