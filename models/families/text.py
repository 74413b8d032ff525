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
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pyarrow.parquet as pq
import torch
from PIL import Image, ImageOps

from augflow.models.families.common import (
    any_to_mask,
    cell_bytes,
    output_size,
    pad_multiple,
    to_unit,
)
from augflow.models.images import ImageRejected, decode_image
from augflow.schemas.errors import ModelLoadError, RequestError
from augflow.schemas.records import WorkItem

if TYPE_CHECKING:
    from augflow.models.runner import AugmentModel

DENOISE_STRENGTH_RANGE = (0.1, 0.6)


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
    name = "text-latent"

    def __init__(self, model: AugmentModel) -> None:
        self.model = model
        self.op = model.op
        self.request = model.request
        base = model.pipeline
        auto = _auto_class(self.op.kind)
        try:
            # same class -> a new pipeline object over the same modules; otherwise the family's
            # variant for this task (e.g. StableDiffusionImg2ImgPipeline)
            self.pipe = auto.from_pipe(base)
        except (ValueError, KeyError, TypeError) as exc:
            raise ModelLoadError(
                f"model {model.model_id!r}: {type(base).__name__} has no "
                f"{self.op.kind!r} variant in diffusers ({auto.__name__}: {exc})"
            ) from None
        if hasattr(self.pipe, "set_progress_bar_config"):
            self.pipe.set_progress_bar_config(disable=True)
        self.vae_scale = int(getattr(base, "vae_scale_factor", 8))
        self._mask: Image.Image | None = None
        self._mask_cells: dict[str, Any] = {}

    # --- validation --------------------------------------------------------------------------

    def check(self) -> None:
        op, kind = self.op, self.op.kind
        if kind == "generate" and op.class_labels is not None and op.class_names is None:
            raise RequestError(
                "operation.class_labels",
                f"model {self.model.model_id!r} is text-to-image and takes prompts, not label "
                "ids; add class_names (and a prompt_template such as 'a photo of a {label}')",
            )
        strength = self.strength()
        if strength is not None and int(self.request.steps * strength) < 1:
            field = "operation.noise_level" if kind == "denoise" else "operation.strength"
            raise RequestError(
                field,
                f"steps {self.request.steps} x strength {strength:g} (from {field}) runs no "
                "denoising step; raise steps or " + field.split(".")[1],
            )
        t_train = self.pipe.scheduler.config.num_train_timesteps
        if self.request.steps > t_train:
            raise RequestError(
                "steps", f"{self.request.steps} exceeds the model's {t_train} training timesteps"
            )
        if kind == "inpaint" and op.mask is not None:
            self._mask = self._load_mask(op.mask)

    def strength(self) -> float | None:
        kind = self.op.kind
        if kind in ("img2img", "upscale", "inpaint"):
            return float(self.op.strength)
        if kind == "denoise":
            lo, hi = DENOISE_STRENGTH_RANGE
            return min(hi, max(lo, self.op.noise_level / 100.0))
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
        items: list[WorkItem],
        sources: list[Image.Image | None],
        gens: list[torch.Generator],
    ) -> tuple[torch.Tensor, list[Image.Image | None]]:
        op, kind, n = self.op, self.op.kind, len(items)
        kw: dict[str, Any] = {
            "num_inference_steps": self.request.steps,
            "generator": gens,
            "output_type": "pt",
        }
        if self.request.guidance_scale is not None:
            kw["guidance_scale"] = self.request.guidance_scale
        if op.kind != "denoise" and op.kind != "upscale" and op.negative_prompt:
            kw["negative_prompt"] = [op.negative_prompt] * n
        prompts = [it.prompt or "" for it in items]
        if kind == "generate":
            w, h = self.native_size()
            out = self.pipe(prompt=prompts, height=h, width=w, **kw).images
            return out.float() * 2 - 1, [None] * n
        srcs: list[Image.Image] = [s for s in sources if s is not None]
        if kind == "img2img":
            inits = [ImageOps.fit(s, self.native_size(), Image.Resampling.BICUBIC) for s in srcs]
            out = self.pipe(prompt=prompts, image=to_unit(inits), strength=op.strength, **kw)
            return out.images.float() * 2 - 1, list(inits)
        if kind == "upscale":
            w, h = srcs[0].size
            f = op.factor
            base = [s.resize((w * f, h * f), Image.Resampling.BICUBIC) for s in srcs]
        else:
            base = srcs
        x = to_unit(base)
        h, w = x.shape[-2:]
        xp = pad_multiple(x, self.vae_scale)
        call: dict[str, Any] = {"image": xp, "strength": self.strength(), **kw}
        if kind == "inpaint":
            masks = [self._mask_for(it, s) for it, s in zip(items, srcs, strict=True)]
            m = to_unit([mk.convert("RGB") for mk in masks])[:, :1]
            call["mask_image"] = pad_multiple(m, self.vae_scale)
            call["height"], call["width"] = xp.shape[-2:]
        out = self.pipe(prompt=prompts, **call).images
        return out[..., :h, :w].float() * 2 - 1, list(srcs)

    # --- masks -------------------------------------------------------------------------------

    def _load_mask(self, uri: str) -> Image.Image:
        from augflow.tasks.storage import open_uri

        try:
            with open_uri(uri) as fh:
                data = fh.read()
            return decode_image(data, uri).convert("L")
        except ImageRejected as exc:
            raise RequestError("operation.mask", f"the mask is not a usable image: {exc}") from None
        except Exception as exc:
            raise RequestError(
                "operation.mask", f"cannot read the mask {uri!r}: {type(exc).__name__}: {exc}"
            ) from None

    def _mask_for(self, item: WorkItem, src: Image.Image) -> Image.Image:
        if self._mask is not None:
            return any_to_mask(self._mask, src.size)
        column = self.op.mask_column
        if item.source_row is None or item.source_uri is None:
            raise ValueError(
                f"operation.mask_column {column!r} needs Parquet inputs; {item.source_id} is a "
                "plain image file (give operation.mask instead)"
            )
        cells = self._mask_cells.get(item.source_uri)
        if cells is None:
            from augflow.tasks.storage import open_uri

            with open_uri(item.source_uri) as fh:
                schema = pq.read_schema(fh)
                if column not in schema.names:
                    raise ValueError(
                        f"{item.source_uri} has no column {column!r} (operation.mask_column); "
                        f"columns: {', '.join(schema.names)}"
                    )
                fh.seek(0)
                cells = pq.read_table(fh, columns=[column]).column(column)
            self._mask_cells = {item.source_uri: cells}  # one file at a time: shards are per file
        data = cell_bytes(cells[item.source_row].as_py())
        if data is None:
            raise ValueError(f"{item.source_uri}#{item.source_row}: empty {column!r} cell")
        return any_to_mask(decode_image(data, f"{item.source_uri}#{item.source_row}"), src.size)
