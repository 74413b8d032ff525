"""Pixel-space UNet2DModel pipelines (DDPMPipeline, DDIMPipeline, and any pipeline that is just a
pixel UNet2DModel and a scheduler), driven step by step rather than through their ``__call__``:

operation  how
generate   the reverse process from noise, unconditional or class-conditional (``class_labels``)
img2img    SDEdit: the source fitted to the native size, noised to ≈ strength·T, sampled back
denoise    the noisy source entered into the reverse process at the timestep whose noise level
           matches ``noise_level`` (deterministic DDIM from there; see ``_denoise_with_prior``)
upscale    bicubic x factor, then SDEdit at ``strength``

A class-conditional UNet (``num_class_embeds``) conditions img2img, denoise and upscale on each
source's label (a Parquet input's ``label`` column), or on the model's null label
(``_null_class_label`` in unet/config.json) for a source without one.

The UNet works with ``unet.config.in_channels`` channels: 3 (RGB) or 1 (grey, e.g. a face
generator trained on greyscale); a grey model sees its sources as luminance, and its output is
replicated to RGB so every row is an RGB PNG.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np
import torch
from PIL import Image, ImageOps

from augflow.models.families.base import Computed, ModelContext
from augflow.models.families.common import (
    check_training_timesteps,
    output_size,
    present,
    resolve_steps,
    run_padded,
    unsupported,
)
from augflow.models.images import pil_to_tensor
from augflow.models.sr3 import estimate_noise_sigma
from augflow.schemas.errors import ModelLoadError, RequestError
from augflow.schemas.records import WorkItem
from augflow.schemas.request import DenoiseOp, GenerateOp, Img2ImgOp, UpscaleOp

#: UNet input channels a pixel pipeline may have: grey or RGB.
PIXEL_CHANNELS = (1, 3)
OPERATIONS = "generate, img2img, denoise and upscale"


def is_pixel_unet_pipeline(pipe: Any) -> bool:
    """A UNet2DModel working on pixels (no VAE/VQ-VAE latents, no text encoder) + a scheduler."""
    from diffusers import UNet2DModel

    latent_or_text = any(
        getattr(pipe, c, None) is not None for c in ("vae", "vqvae", "text_encoder")
    )
    return (
        isinstance(getattr(pipe, "unet", None), UNet2DModel)
        and not latent_or_text
        and getattr(pipe, "scheduler", None) is not None
    )


class UNetFamily:
    name: ClassVar[str] = "unet"
    summary: ClassVar[str] = (
        f"{OPERATIONS} with UNet2DModel pixel pipelines (DDPMPipeline, DDIMPipeline)"
    )

    @classmethod
    def matches(cls, pipeline: Any) -> bool:
        return is_pixel_unet_pipeline(pipeline)

    def __init__(self, ctx: ModelContext) -> None:
        self.ctx = ctx
        self.pipe: Any = ctx.pipeline
        self.op = ctx.op
        self.request = ctx.request
        config = self.pipe.unet.config
        self.channels = int(config.in_channels)
        self.num_classes: int | None = config.num_class_embeds
        # The class id a class-conditional model was trained with for "label unknown"
        # (classifier-free style), declared as ``_null_class_label`` in unet/config.json: diffusers
        # keeps private keys in ``unet.config`` without warning about them. None: no such class.
        null = config.get("_null_class_label") if self.num_classes is not None else None
        self.null_label: int | None = None if null is None else int(null)
        self.steps: int = resolve_steps(ctx, self.pipe)

    # --- validation ----------------------------------------------------------------------------

    def check(self) -> None:
        ctx, op, kind = self.ctx, self.op, self.op.kind
        if kind == "inpaint":
            raise unsupported(ctx, OPERATIONS)
        if self.channels not in PIXEL_CHANNELS:
            raise ModelLoadError(
                f"model {ctx.model_id!r}: its UNet takes {self.channels} input channels; pixel "
                f"pipelines with {' or '.join(map(str, PIXEL_CHANNELS))} channels (grey or RGB) "
                "are supported"
            )
        labels = op.class_labels if isinstance(op, GenerateOp) else None
        if self.num_classes is not None and kind == "generate":
            if not labels:
                raise RequestError(
                    "operation.class_labels",
                    f"model {ctx.model_id!r} is class-conditional ({self.num_classes} classes); "
                    "give class_labels, e.g. [0, 1]",
                )
            bad = [c for c in labels if not 0 <= c < self.num_classes]
            if bad:
                raise RequestError(
                    "operation.class_labels",
                    f"labels {bad} are outside the model's classes 0..{self.num_classes - 1}",
                )
        elif labels:
            raise RequestError(
                "operation.class_labels",
                f"model {ctx.model_id!r} is unconditional; remove class_labels",
            )
        prompted = (isinstance(op, GenerateOp) and op.prompts) or (
            isinstance(op, Img2ImgOp) and op.prompt
        )
        if prompted:
            field = "operation.prompts" if kind == "generate" else "operation.prompt"
            raise RequestError(
                field,
                f"model {ctx.model_id!r} ({type(self.pipe).__name__}) takes no text prompt; "
                "remove it",
            )
        check_training_timesteps(ctx, self.steps, self.pipe.scheduler)

    # --- sizes ---------------------------------------------------------------------------------

    def native_size(self) -> tuple[int, int]:
        if self.request.image_size is not None:
            return self.request.image_size, self.request.image_size
        s = self.pipe.unet.config.sample_size
        if isinstance(s, int):
            return s, s
        return int(s[1]), int(s[0])  # diffusers stores (height, width)

    def expected_size(self, source_size: tuple[int, int] | None) -> tuple[int, int]:
        native = self.native_size() if self.op.kind in ("generate", "img2img") else (0, 0)
        return output_size(self.op, native, source_size)

    # --- the call ------------------------------------------------------------------------------

    def compute(
        self,
        items: Sequence[WorkItem],
        sources: Sequence[Image.Image | None],
        generators: list[torch.Generator],
    ) -> Computed:
        op = self.op
        if isinstance(op, GenerateOp):
            x = self._generate(len(items), generators, self._labels(items))
            return Computed(self._rgb(x), [None] * len(items))
        srcs = present(sources)
        labels = self._source_labels(items)
        if isinstance(op, Img2ImgOp):
            inits = [ImageOps.fit(s, self.native_size(), Image.Resampling.BICUBIC) for s in srcs]
            x = self._sdedit(self._pixels(inits), generators, op.strength, labels)
        elif isinstance(op, UpscaleOp):
            w, h = srcs[0].size
            f = op.factor
            big = [s.resize((w * f, h * f), Image.Resampling.BICUBIC) for s in srcs]
            strength = op.strength
            x = run_padded(
                self._pixels(big),
                self._pad_multiple(),
                lambda c: self._sdedit(c, generators, strength, labels),
            )
            inits = srcs
        elif isinstance(op, DenoiseOp):
            noise_level = op.noise_level
            x = run_padded(
                self._pixels(srcs),
                self._pad_multiple(),
                lambda c: self._denoise_each(c, noise_level, labels),
            )
            inits = srcs
        else:
            raise unsupported(self.ctx, OPERATIONS)
        return Computed(self._rgb(x), [self._as_seen(s) for s in inits])

    # --- channels ------------------------------------------------------------------------------

    def _pixels(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """Same-size images -> (B, C, H, W) in [-1, 1] with the UNet's channel count."""
        if self.channels == 1:
            arr = np.stack([np.asarray(im.convert("L"), dtype=np.float32) for im in images])
            return torch.from_numpy(arr)[:, None] / 127.5 - 1.0
        return pil_to_tensor(list(images))

    def _as_seen(self, img: Image.Image) -> Image.Image:
        """The source as the model saw it (luminance for a grey model): its faithfulness
        reference, so a grey model is not scored for the colour it was never given."""
        return img.convert("L").convert("RGB") if self.channels == 1 else img

    def _rgb(self, x: torch.Tensor) -> torch.Tensor:
        return x.repeat(1, 3, 1, 1) if x.shape[1] == 1 else x

    # --- sampling ------------------------------------------------------------------------------

    def _labels(self, items: Sequence[WorkItem]) -> torch.Tensor | None:
        if self.num_classes is None:
            return None
        labels = [it.class_label for it in items]
        if any(label is None for label in labels):
            raise ValueError("class-conditional model but no class_label")
        return torch.tensor(labels, device=self.ctx.torch_device)

    def _source_labels(self, items: Sequence[WorkItem]) -> torch.Tensor | None:
        """Class ids conditioning a class-conditional model on sources: each item's label (from
        its input row), or the model's null label for an item without one. None: unconditional."""
        if self.num_classes is None:
            return None
        ids: list[int] = []
        for it in items:
            label = it.class_label if it.class_label is not None else self.null_label
            if label is None:
                raise RequestError(
                    "inputs",
                    f"model {self.ctx.model_id!r} is class-conditional and has no null label "
                    f"(`_null_class_label` in unet/config.json), but source {it.source_id!r} has "
                    "no label; give Parquet inputs a `label` column",
                )
            if not 0 <= label < self.num_classes:
                raise RequestError(
                    "inputs",
                    f"source {it.source_id!r} has label {label}, outside the classes 0.."
                    f"{self.num_classes - 1} of model {self.ctx.model_id!r}",
                )
            ids.append(label)
        return torch.tensor(ids, device=self.ctx.torch_device)

    def _generate(
        self, n: int, gens: list[torch.Generator], labels: torch.Tensor | None
    ) -> torch.Tensor:
        from diffusers.utils.torch_utils import randn_tensor

        sched = self.pipe.scheduler
        sched.set_timesteps(self.steps, device=self.ctx.device)
        w, h = self.native_size()
        x = randn_tensor(
            (n, self.channels, h, w),
            generator=gens,
            device=self.ctx.torch_device,
            dtype=self.ctx.dtype,
        )
        x = x * sched.init_noise_sigma
        return self._reverse(x, sched.timesteps, gens, labels)

    def _sdedit(
        self,
        x0: torch.Tensor,
        gens: list[torch.Generator],
        strength: float,
        labels: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Noise ``x0`` to timestep ≈ strength·T with each image's generator, then sample back."""
        from diffusers.utils.torch_utils import randn_tensor

        sched = self.pipe.scheduler
        steps = self.steps
        sched.set_timesteps(steps, device=self.ctx.device)
        init_steps = max(1, min(steps, round(steps * strength)))
        t_start = steps - init_steps
        begin = t_start * sched.order
        timesteps = sched.timesteps[begin:]
        if hasattr(sched, "set_begin_index"):
            sched.set_begin_index(begin)
        dev = self.ctx.torch_device
        x0 = x0.to(dev, self.ctx.dtype)
        noise = randn_tensor(x0.shape, generator=gens, device=dev, dtype=self.ctx.dtype)
        x = sched.add_noise(x0, noise, timesteps[:1].repeat(x0.shape[0]))
        return self._reverse(x, timesteps, gens, labels)

    def _reverse(
        self,
        x: torch.Tensor,
        timesteps: torch.Tensor,
        gens: list[torch.Generator],
        labels: torch.Tensor | None,
    ) -> torch.Tensor:
        sched = self.pipe.scheduler
        unet = self.pipe.unet  # read per call: compile may have replaced it after __init__
        step_kw: dict[str, Any] = {}
        if "generator" in inspect.signature(sched.step).parameters:
            step_kw["generator"] = gens
        for t in timesteps:
            inp = sched.scale_model_input(x, t)
            out = unet(inp, t, class_labels=labels).sample
            x = sched.step(out, t, x, **step_kw).prev_sample
        return x.float()

    def _denoise_each(
        self, y: torch.Tensor, noise_level: float | None, labels: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Denoise at the request's σ, or (unset) at each image's own estimated σ."""
        if noise_level is not None:
            return self._denoise_with_prior(y, noise_level, labels)
        sigmas = estimate_noise_sigma(y[:, :3] if y.shape[1] >= 3 else y.repeat(1, 3, 1, 1))
        return torch.cat(
            [
                self._denoise_with_prior(
                    y[i : i + 1], max(float(s), 0.5), None if labels is None else labels[i : i + 1]
                )
                for i, s in enumerate(sigmas)
            ]
        )

    def _denoise_with_prior(
        self, y: torch.Tensor, noise_level: float, labels: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Denoise with an unconditional prior by entering the reverse process mid-way.

        A noisy image y = x0 + σ·n is, up to scale, a sample of the forward process at the timestep
        t where sqrt((1-ᾱ_t)/ᾱ_t) = σ: x_t = sqrt(ᾱ_t)·y. From there deterministic DDIM steps
        (η = 0) go back to t = 0. DDIM is used whatever the configured scheduler because the entry
        point is an arbitrary training timestep, which most schedulers' timestep tables do not
        contain; being deterministic, the result does not depend on the seed.
        """
        from diffusers import DDPMScheduler

        unet = self.pipe.unet
        config = self.pipe.scheduler.config
        ac = DDPMScheduler.from_config(config).alphas_cumprod.to(torch.float64)
        prediction = config.get("prediction_type", "epsilon")
        sigma = 2.0 * noise_level / 255.0
        t_enter = int(torch.argmin((torch.sqrt((1 - ac) / ac) - sigma).abs()))
        n = max(1, min(self.steps, t_enter + 1))
        ts = sorted({int(v) for v in np.round(np.linspace(t_enter, 0, n))}, reverse=True)
        y = y.to(self.ctx.torch_device, torch.float32)
        x = float(ac[t_enter].sqrt()) * y
        c = self.channels
        for i, t in enumerate(ts):
            a_t = float(ac[t])
            # [:, :c]: a UNet with learned variance outputs twice the channels it takes
            out = unet(x.to(self.ctx.dtype), t, class_labels=labels).sample.float()[:, :c]
            if prediction == "epsilon":
                eps = out
                x0 = (x - (1 - a_t) ** 0.5 * eps) / a_t**0.5
            elif prediction == "sample":
                x0 = out
                eps = (x - a_t**0.5 * x0) / max(1 - a_t, 1e-12) ** 0.5
            else:  # v_prediction
                x0 = a_t**0.5 * x - (1 - a_t) ** 0.5 * out
                eps = a_t**0.5 * out + (1 - a_t) ** 0.5 * x
            x0 = x0.clamp(-1.0, 1.0)  # pixel models live in [-1, 1]; keeps a bad step bounded
            if i + 1 == len(ts):
                return x0
            a_prev = float(ac[ts[i + 1]])
            x = a_prev**0.5 * x0 + (1 - a_prev) ** 0.5 * eps
        return x  # unreachable: ts always has at least one element

    def _pad_multiple(self) -> int:
        return max(8, 2 ** (len(self.pipe.unet.config.block_out_channels) - 1))
