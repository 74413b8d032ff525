"""SR3-style conditional diffusion pipeline used by augflow's bundled denoiser and upscaler.

The UNet sees ``cat([x_t, cond])`` (6 channels) and predicts the clean image as a residual on the
condition (``x0 = cond + unet(...)``): the condition is already close to the answer, so a small
UNet trained briefly on CPU only has to learn the correction. The scheduler predicts ``sample``
(x0), and DDIM with eta=0 and few steps keeps the output near the conditional mean, which is what
PSNR rewards; more steps trade a little PSNR for sharper texture.
"""

from __future__ import annotations

import torch
from diffusers import DDIMScheduler, DiffusionPipeline, UNet2DModel
from diffusers.utils.torch_utils import randn_tensor

from augflow.models.tiling import tiled_apply

TASKS = ("denoise", "upscale")


class SR3Pipeline(DiffusionPipeline):
    """Conditional image-to-image diffusion: ``cond`` (B,3,H,W) in [-1,1] → (B,3,H,W) in [-1,1].

    Config (saved in model_index.json, round-trips through from_pretrained):
    ``task`` "denoise" or "upscale"; ``factors`` the upscale factors it was trained for (the
    condition is the bicubic-upsampled low-res image, so one model serves every factor in the
    list); ``sigma_range`` the noise σ range (0–255 scale) a denoiser was trained on;
    ``tile_size``/``tile_overlap`` how any image size is processed; ``default_steps``.
    """

    model_cpu_offload_seq = "unet"

    def __init__(
        self,
        unet: UNet2DModel,
        scheduler: DDIMScheduler,
        task: str = "denoise",
        factors: list[int] | None = None,
        sigma_range: list[float] | None = None,
        tile_size: int = 64,
        tile_overlap: int = 16,
        default_steps: int = 4,
    ) -> None:
        super().__init__()
        if task not in TASKS:
            raise ValueError(f"task must be one of {TASKS}, got {task!r}")
        self.register_modules(unet=unet, scheduler=scheduler)
        self.register_to_config(
            task=task,
            factors=[int(f) for f in (factors or [])],
            sigma_range=[float(s) for s in (sigma_range or [])],
            tile_size=int(tile_size),
            tile_overlap=int(tile_overlap),
            default_steps=int(default_steps),
        )

    @property
    def multiple(self) -> int:
        """Spatial size multiple the UNet needs (one halving per down block after the first)."""
        return 2 ** (len(self.unet.config.block_out_channels) - 1)

    def supports(self, task: str, factor: int = 1) -> bool:
        """Whether this model was trained for `task` (and, for upscale, this `factor`)."""
        if task != self.config.task:
            return False
        return task != "upscale" or int(factor) in self.config.factors

    def _denoise_tiles(self, tiles: torch.Tensor) -> torch.Tensor:
        # tiles: (N,6,h,w) = [x_T noise, cond]; the noise is a slice of one full-image draw, so
        # overlapping tiles start from the same noise and agree where they overlap.
        x, cond = tiles[:, :3], tiles[:, 3:]
        x = x * self.scheduler.init_noise_sigma
        x0 = cond
        for t in self.scheduler.timesteps:
            tt = torch.full((x.shape[0],), int(t), device=x.device, dtype=torch.long)
            residual = self.unet(torch.cat([x, cond], dim=1), tt).sample
            x0 = (cond + residual).clamp(-1.0, 1.0)
            x = self.scheduler.step(x0, t, x, eta=0.0).prev_sample
        # With set_alpha_to_one the last step returns x0 itself; use it explicitly so the output
        # does not depend on that scheduler option.
        return x0

    @torch.no_grad()
    def __call__(
        self,
        cond: torch.Tensor,
        generator: list[torch.Generator],
        num_inference_steps: int | None = None,
        tile_size: int | None = None,
        tile_overlap: int | None = None,
    ) -> torch.Tensor:
        """Restore a batch. One generator per image, so batch size never changes an image."""
        if cond.ndim != 4 or cond.shape[1] != 3:
            raise ValueError(f"cond must be (B,3,H,W), got {tuple(cond.shape)}")
        if len(generator) != cond.shape[0]:
            raise ValueError(f"need one generator per image: {len(generator)} for {cond.shape[0]}")
        steps = int(num_inference_steps or self.config.default_steps)
        tile = int(tile_size or self.config.tile_size)
        overlap = int(tile_overlap if tile_overlap is not None else self.config.tile_overlap)
        device, dtype = self.unet.device, self.unet.dtype
        self.scheduler.set_timesteps(steps, device=device)
        outs = []
        for i, g in enumerate(generator):
            c = cond[i : i + 1].to(device=device, dtype=dtype)
            noise = randn_tensor(c.shape, generator=g, device=device, dtype=dtype)
            out = tiled_apply(
                torch.cat([noise, c], dim=1),
                self._denoise_tiles,
                tile=tile,
                overlap=overlap,
                multiple=self.multiple,
            )
            outs.append(out)
        return torch.cat(outs).clamp(-1.0, 1.0).to(cond.device)
