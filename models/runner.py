"""The model callable: a request's pipeline loaded once, a batch of work items in, PNGs + metrics out.

No Prefect, no Ray: a Ray actor wraps one :class:`AugmentModel`, tests call it directly.

Determinism: every image has its own ``torch.Generator`` seeded from ``WorkItem.seed``, and by
default every image is also *computed* on its own (batch of one through the whole sampling loop).
Convolution kernels on CPU and GPU pick different algorithms and reduction orders for different
batch shapes (measured: ~1e-6 difference between a batch of 4 and four batches of 1 on CPU), which
after many steps can flip a rounded pixel; since ``execution.batch_size`` is deliberately not part of
the request hash, an image must not depend on it. ``batch_invariant=False`` batches same-size items
through the UNet for throughput, at the cost of that guarantee; it is the default on CUDA (see
:mod:`augflow.models.speed`), where batching is most of the speed and fp16 is not bit-stable
across GPU models anyway. Either way each image keeps its own generator, so its noise is the same.

A CUDA out-of-memory error in a batch halves the batch (for the rest of the actor's life) and
retries, instead of failing the shard.

Families (``self.family``): ``unet`` (UNet2DModel pixel pipelines, below), ``sr3`` (augflow's
SR3Pipeline), ``text-latent`` (Stable Diffusion and friends: :mod:`.families.text`) and
``upscaler`` (x4 / latent x2 / LDM super-resolution: :mod:`.families.upscalers`).
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps

from augflow.models.families.common import output_size
from augflow.models.images import encode_png, pil_to_tensor, tensor_to_pil
from augflow.models.loading import load_pipeline
from augflow.models.metrics import compute_metrics
from augflow.models.speed import (
    SpeedOptions,
    apply_speedups,
    auto_batch_size,
    free_cuda_bytes,
    is_cuda_oom,
    release_cuda_memory,
)
from augflow.schemas.errors import ModelLoadError, RequestError
from augflow.schemas.records import WorkItem
from augflow.schemas.request import AugmentRequest

log = logging.getLogger(__name__)

SUPPORTED = (
    "generate/img2img/denoise/upscale with UNet2DModel pixel pipelines (DDPMPipeline, "
    "DDIMPipeline); denoise/upscale with SR3Pipeline; generate/img2img/denoise/upscale/inpaint "
    "with text-conditioned latent pipelines (StableDiffusion*, SDXL); upscale with "
    "StableDiffusionUpscalePipeline, StableDiffusionLatentUpscalePipeline, "
    "LDMSuperResolutionPipeline"
)


@dataclass
class ImageOutput:
    """One item's result. ``error`` is set (and png/metrics are None) only when this item failed."""

    png: bytes | None
    metrics: dict[str, Any] | None
    error: str | None = None


def _sr3_class() -> type | None:
    try:
        from augflow.models.sr3 import SR3Pipeline
    except ImportError:
        return None
    return SR3Pipeline


class AugmentModel:
    """Holds one loaded pipeline for one request; call it with batches of work items."""

    def __init__(
        self,
        request: AugmentRequest,
        device: str = "auto",
        *,
        batch_invariant: bool | None = None,
    ) -> None:
        self.request = request
        self.op = request.operation
        loaded = load_pipeline(request.model, device)
        self.pipeline = loaded.pipeline
        self.model_id = loaded.model_id
        self.model_revision = loaded.revision
        self.scheduler_name = loaded.scheduler_name
        self.device = loaded.device
        self.dtype = loaded.dtype
        self.speed = SpeedOptions.for_device(self.device, batch_invariant)
        self.batch_invariant = self.speed.batch_invariant
        #: largest batch the model is given; halved for good by a CUDA out-of-memory error
        self.max_batch = 1 if self.batch_invariant else request.execution.batch_size
        self._impl: Any = None
        from augflow.models.families.text import TextLatentFamily, is_text_latent
        from augflow.models.families.upscalers import UpscalerFamily, is_upscaler

        sr3 = _sr3_class()
        if sr3 is not None and isinstance(self.pipeline, sr3):
            self.family = "sr3"
        elif is_upscaler(self.pipeline):
            self.family, self._impl = "upscaler", UpscalerFamily(self)
        elif type(self.pipeline).__name__ == "SleepPipeline":  # benchmark fake: models/sleep.py
            from augflow.models.sleep import SleepFamily

            self.family, self._impl = "sleep", SleepFamily(self)
        elif is_text_latent(self.pipeline) and self.op.kind in (
            "generate",
            "img2img",
            "denoise",
            "upscale",
            "inpaint",
        ):
            self.family, self._impl = "text-latent", TextLatentFamily(self)
        else:
            self.family = "unet"
        self._check_supported()
        # after the checks: they look at the real module classes, which compile wraps
        self.speed_settings = apply_speedups(self.task_pipeline, self.speed)
        if (
            not self.batch_invariant
            and self.device.startswith("cuda")
            and "batch_size" not in request.execution.model_fields_set
        ):
            self.max_batch = auto_batch_size(self._unet_pixels(), free_cuda_bytes())
        self.speed_settings["batch_size"] = self.max_batch

    def _unet_pixels(self) -> int:
        """Spatial size the UNet works at for this request's native output (batch sizing)."""
        unet = getattr(self.pipeline, "unet", None)
        if unet is None or self.op.kind not in ("generate", "img2img"):
            return 128 * 128  # unknown or per-source sizes: a conservative guess
        w, h = self.expected_size(None)
        vae = getattr(self.pipeline, "vae", None)
        scale = 2 ** (len(vae.config.block_out_channels) - 1) if vae is not None else 1
        return (w // scale) * (h // scale)

    @property
    def task_pipeline(self) -> Any:
        """The pipeline object actually called (for text models: the task variant of the load)."""
        return self._impl.pipe if self._impl is not None else self.pipeline

    # --- validation ----------------------------------------------------------------------------

    def _check_supported(self) -> None:
        if self._impl is not None:
            self._impl.check()
            return
        kind = self.op.kind
        cls_name = type(self.pipeline).__name__
        unsupported = ModelLoadError(
            f"model {self.model_id!r}: pipeline class {cls_name} is not supported for operation "
            f"{kind!r} yet; supported: {SUPPORTED}"
        )
        if kind == "inpaint":
            raise unsupported
        if self.family == "sr3":
            if kind not in ("denoise", "upscale"):
                raise unsupported
            factor = getattr(self.op, "factor", 1)
            supports = getattr(self.pipeline, "supports", None)
            if supports is not None and not supports(kind, factor):
                cfg = self.pipeline.config
                raise ModelLoadError(
                    f"model {self.model_id!r} was trained for {cfg.get('task')!r} (factors "
                    f"{cfg.get('factors')}), not {kind!r}"
                    + (f" x{factor}" if kind == "upscale" else "")
                    + "; pick the bundled model made for this operation"
                )
            return
        unet = getattr(self.pipeline, "unet", None)
        from diffusers import UNet2DModel

        pixel_space = not any(
            getattr(self.pipeline, c, None) is not None for c in ("vae", "vqvae", "text_encoder")
        )
        if not (isinstance(unet, UNet2DModel) and pixel_space and self.pipeline.scheduler):
            raise unsupported
        n_classes = unet.config.num_class_embeds
        labels = getattr(self.op, "class_labels", None)
        if n_classes is not None:
            if kind != "generate":
                raise ModelLoadError(
                    f"model {self.model_id!r} is class-conditional; operation {kind!r} with a "
                    f"class-conditional model is not supported yet; supported: {SUPPORTED}"
                )
            if not labels:
                raise RequestError(
                    "operation.class_labels",
                    f"model {self.model_id!r} is class-conditional ({n_classes} classes); give "
                    "class_labels, e.g. [0, 1]",
                )
            bad = [c for c in labels if not 0 <= c < n_classes]
            if bad:
                raise RequestError(
                    "operation.class_labels",
                    f"labels {bad} are outside the model's classes 0..{n_classes - 1}",
                )
        elif labels:
            raise RequestError(
                "operation.class_labels",
                f"model {self.model_id!r} is unconditional; remove class_labels",
            )
        if getattr(self.op, "prompts", None) or getattr(self.op, "prompt", None):
            field = "operation.prompts" if kind == "generate" else "operation.prompt"
            raise RequestError(
                field, f"model {self.model_id!r} ({cls_name}) takes no text prompt; remove it"
            )
        t_train = self.pipeline.scheduler.config.num_train_timesteps
        if self.request.steps > t_train:
            raise RequestError(
                "steps", f"{self.request.steps} exceeds the model's {t_train} training timesteps"
            )

    # --- sizes ---------------------------------------------------------------------------------

    def _native_size(self) -> tuple[int, int]:
        if self.request.image_size is not None:
            return self.request.image_size, self.request.image_size
        s = self.pipeline.unet.config.sample_size
        if isinstance(s, int):
            return s, s
        return int(s[1]), int(s[0])  # diffusers stores (height, width)

    def expected_size(self, source_size: tuple[int, int] | None) -> tuple[int, int]:
        """Output (w, h) for an item whose source is ``source_size`` (None for generate)."""
        if self._impl is not None:
            return self._impl.expected_size(source_size)
        native = self._native_size() if self.op.kind in ("generate", "img2img") else (0, 0)
        return output_size(self.op, native, source_size)

    # --- the call ------------------------------------------------------------------------------

    def __call__(
        self, items: Sequence[WorkItem], sources: Sequence[Image.Image | None]
    ) -> list[ImageOutput]:
        if len(items) != len(sources):
            raise ValueError(f"{len(items)} items but {len(sources)} sources")
        results: list[ImageOutput | None] = [None] * len(items)
        groups: dict[tuple[int, int] | None, list[int]] = {}
        for i, (item, src) in enumerate(zip(items, sources, strict=True)):
            if self.op.kind != "generate" and src is None:
                results[i] = ImageOutput(None, None, "no source image was given for this item")
                continue
            if self._class_conditional and item.class_label is None:
                results[i] = ImageOutput(None, None, "class-conditional model but no class_label")
                continue
            key = None if src is None or self.op.kind in ("generate", "img2img") else src.size
            groups.setdefault(key, []).append(i)
        for idx in groups.values():
            k = 0
            while k < len(idx):
                # max_batch is re-read each time: an OOM in this loop lowers it for what follows
                chunk = idx[k : k + self.max_batch]
                self._run_isolated(chunk, items, sources, results)
                k += len(chunk)
        return [r for r in results if r is not None]

    def _run_isolated(self, idx, items, sources, results) -> None:
        """Run a chunk; if it fails, retry item by item so one bad item does not sink the rest.

        A CUDA out-of-memory error is not the items' fault: the chunk is split in halves, the
        actor's ``max_batch`` lowered, and both halves retried.
        """
        try:
            outs = self._run_chunk([items[i] for i in idx], [sources[i] for i in idx])
        except Exception as exc:
            if is_cuda_oom(exc) and len(idx) > 1:
                half = (len(idx) + 1) // 2
                self.max_batch = min(self.max_batch, half)
                log.warning(
                    "CUDA out of memory with a batch of %d; retrying with batches of %d",
                    len(idx),
                    self.max_batch,
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
            results[idx[0]] = ImageOutput(None, None, f"{type(exc).__name__}: {exc}")
            return
        for i, out in zip(idx, outs, strict=True):
            results[i] = out

    @torch.inference_mode()
    def _run_chunk(
        self, items: list[WorkItem], sources: list[Image.Image | None]
    ) -> list[ImageOutput]:
        gens = [torch.Generator(self.device).manual_seed(it.seed) for it in items]
        kind = self.op.kind
        refs: list[Image.Image | None]
        if self._impl is not None:
            x, refs = self._impl.compute(items, sources, gens)
        elif kind == "generate":
            x = self._generate(items, gens)
            refs = [None] * len(items)
        elif kind == "img2img":
            size = self._native_size()
            inits = [ImageOps.fit(s, size, Image.Resampling.BICUBIC) for s in sources]
            x = self._sdedit(pil_to_tensor(inits), gens, self.op.strength)
            refs = list(inits)
        elif kind == "denoise":
            cond = pil_to_tensor(sources)
            x = self._padded(cond, lambda c: self._denoise(c, gens))
            refs = list(sources)
        else:  # upscale
            w, h = sources[0].size
            big = [
                s.resize((w * self.op.factor, h * self.op.factor), Image.Resampling.BICUBIC)
                for s in sources
            ]
            x = self._padded(pil_to_tensor(big), lambda c: self._upscale(c, gens))
            refs = list(sources)
        images, nan_flags = tensor_to_pil(x)
        outs = []
        for img, has_nan, ref, src in zip(images, nan_flags, refs, sources, strict=True):
            png = encode_png(img)
            metrics = compute_metrics(
                png,
                operation=kind,
                expected_size=self.expected_size(None if src is None else src.size),
                has_nan=has_nan,
                min_pixel_std=self.request.quality.min_pixel_std,
                reference=ref,
            )
            outs.append(ImageOutput(png, metrics))
        return outs

    # --- operations ----------------------------------------------------------------------------

    @property
    def _class_conditional(self) -> bool:
        if self.family != "unet":
            return False
        return self.family == "unet" and self.pipeline.unet.config.num_class_embeds is not None

    def _labels(self, items: list[WorkItem]) -> torch.Tensor | None:
        if not self._class_conditional:
            return None
        return torch.tensor([it.class_label for it in items], device=self.device)

    def _generate(self, items: list[WorkItem], gens: list[torch.Generator]) -> torch.Tensor:
        from diffusers.utils.torch_utils import randn_tensor

        sched = self.pipeline.scheduler
        sched.set_timesteps(self.request.steps, device=self.device)
        w, h = self._native_size()
        x = randn_tensor((len(items), 3, h, w), generator=gens, device=self._dev, dtype=self.dtype)
        x = x * sched.init_noise_sigma
        return self._reverse(x, sched.timesteps, gens, self._labels(items))

    def _sdedit(
        self, x0: torch.Tensor, gens: list[torch.Generator], strength: float
    ) -> torch.Tensor:
        """Noise ``x0`` to timestep ≈ strength·T with each image's generator, then sample back."""
        from diffusers.utils.torch_utils import randn_tensor

        sched = self.pipeline.scheduler
        steps = self.request.steps
        sched.set_timesteps(steps, device=self.device)
        init_steps = max(1, min(steps, round(steps * strength)))
        t_start = steps - init_steps
        begin = t_start * sched.order
        timesteps = sched.timesteps[begin:]
        if hasattr(sched, "set_begin_index"):
            sched.set_begin_index(begin)
        x0 = x0.to(self._dev, self.dtype)
        noise = randn_tensor(x0.shape, generator=gens, device=self._dev, dtype=self.dtype)
        x = sched.add_noise(x0, noise, timesteps[:1].repeat(x0.shape[0]))
        return self._reverse(x, timesteps, gens, None)

    def _reverse(
        self,
        x: torch.Tensor,
        timesteps: torch.Tensor,
        gens: list[torch.Generator],
        labels: torch.Tensor | None,
    ) -> torch.Tensor:
        sched = self.pipeline.scheduler
        unet = self.pipeline.unet
        step_kw: dict[str, Any] = {}
        if "generator" in inspect.signature(sched.step).parameters:
            step_kw["generator"] = gens
        for t in timesteps:
            inp = sched.scale_model_input(x, t)
            out = unet(inp, t, class_labels=labels).sample
            x = sched.step(out, t, x, **step_kw).prev_sample
        return x.float()

    def _denoise(self, y: torch.Tensor, gens: list[torch.Generator]) -> torch.Tensor:
        if self.family == "sr3":
            return self._sr3(y, gens)
        return self._denoise_with_prior(y)

    def _upscale(self, big: torch.Tensor, gens: list[torch.Generator]) -> torch.Tensor:
        if self.family == "sr3":
            return self._sr3(big, gens)
        return self._sdedit(big, gens, self.op.strength)

    def _sr3(self, cond: torch.Tensor, gens: list[torch.Generator]) -> torch.Tensor:
        out = self.pipeline(
            cond.to(self._dev, self.dtype), generator=gens, num_inference_steps=self.request.steps
        )
        return out.float()

    def _denoise_with_prior(self, y: torch.Tensor) -> torch.Tensor:
        """Denoise with an unconditional prior by entering the reverse process mid-way.

        A noisy image y = x0 + σ·n is, up to scale, a sample of the forward process at the timestep
        t where sqrt((1-ᾱ_t)/ᾱ_t) = σ: x_t = sqrt(ᾱ_t)·y. From there deterministic DDIM steps
        (η = 0) go back to t = 0. DDIM is used whatever the configured scheduler because the entry
        point is an arbitrary training timestep, which most schedulers' timestep tables do not
        contain; being deterministic, the result does not depend on the seed.
        """
        from diffusers import DDPMScheduler

        unet = self.pipeline.unet
        config = self.pipeline.scheduler.config
        ac = DDPMScheduler.from_config(config).alphas_cumprod.to(torch.float64)
        prediction = config.get("prediction_type", "epsilon")
        sigma = 2.0 * self.op.noise_level / 255.0
        t_enter = int(torch.argmin((torch.sqrt((1 - ac) / ac) - sigma).abs()))
        n = max(1, min(self.request.steps, t_enter + 1))
        ts = sorted({int(v) for v in np.round(np.linspace(t_enter, 0, n))}, reverse=True)
        y = y.to(self._dev, torch.float32)
        x = float(ac[t_enter].sqrt()) * y
        for i, t in enumerate(ts):
            a_t = float(ac[t])
            out = unet(x.to(self.dtype), t).sample.float()[:, :3]
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

    # --- helpers -------------------------------------------------------------------------------

    @property
    def _dev(self) -> torch.device:
        return torch.device(self.device)

    def _pad_multiple(self) -> int:
        if self.family == "unet":
            return max(8, 2 ** (len(self.pipeline.unet.config.block_out_channels) - 1))
        return 8

    def _padded(self, x: torch.Tensor, fn) -> torch.Tensor:
        """Run ``fn`` on ``x`` padded (reflect) to a size the UNet accepts, then crop back."""
        m = self._pad_multiple()
        h, w = x.shape[-2:]
        ph, pw = (-h) % m, (-w) % m
        if ph == 0 and pw == 0:
            return fn(x)
        # reflect needs the pad smaller than the side; tiny images fall back to edge replication
        mode = "reflect" if ph < h and pw < w else "replicate"
        xp = F.pad(x, (0, pw, 0, ph), mode=mode)
        return fn(xp)[..., :h, :w]
