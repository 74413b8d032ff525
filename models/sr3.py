"""SR3-style conditional diffusion pipeline used by augflow's bundled denoiser and upscaler.

The UNet sees ``cat([x_t, cond])`` and predicts the clean image as a residual on the condition
(``x0 = cond + unet(...)``): the condition is already close to the answer, so a small UNet only
has to learn the correction. The scheduler predicts ``sample`` (x0) with "trailing" timesteps, so
one step (t = T-1, x_t pure noise) is the network's conditional-mean estimate — what PSNR
rewards — and the bundled models are trained mostly at exactly that timestep (see
``models/training/train.py``). More steps refine from there with DDIM (eta=0).

Two options make small models cheap and accurate on CPU:

- ``space_to_depth`` s: the UNet works on ``pixel_unshuffle(·, s)`` of its inputs (s² times the
  channels at 1/s the resolution, FFDNet-style) and its output is shuffled back, so the full-
  resolution convolutions cost s² less for the same receptive field.
- ``noise_map`` (denoisers): one more input channel holds the noise σ, which the caller gives
  (``noise_level``, 0–255 scale, e.g. the request's ``operation.noise_level``) or the pipeline
  estimates from the image (median absolute deviation of the finest diagonal Haar wavelet band,
  the estimator of Donoho & Johnstone that scikit-image's ``estimate_sigma`` also uses).
- ``self_ensemble`` n: the image is also restored flipped/rotated (n of the 8 dihedral views,
  with the starting noise transformed alike) and the views are averaged after undoing the
  transform: the errors of a small model differ between views, so the average is closer to the
  truth (measured gain in docs/bundled-models.md) at n times the compute.
- ``scale_x_t``: x_t enters the network scaled by √ᾱ_t (its signal share), so at the last
  timestep the noise input is ~0 and the single default step is a clean regression; without it the
  upscaler learnt nothing over bicubic in its first 500 steps (measured), the noise input drowning
  the small residual it has to find.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from diffusers import DDIMScheduler, DiffusionPipeline, UNet2DModel
from diffusers.utils.torch_utils import randn_tensor

from augflow.models.tiling import tiled_apply

TASKS = ("denoise", "upscale")
#: σ (0–255 scale) is given to the UNet as a constant channel of value σ / SIGMA_SCALE.
SIGMA_SCALE = 50.0


def estimate_noise_sigma(img: torch.Tensor) -> torch.Tensor:
    """Gaussian noise σ (0–255 scale) of each image in (B,C,H,W) ``img`` in [-1,1].

    Robust median estimator on the finest diagonal Haar detail band, averaged over channels.
    Image structure leaks into the band, so on textured photos it over-estimates a little; flat
    clipped (saturated) regions carry no noise, so there it under-estimates.
    """
    x = img.float()
    h, w = (x.shape[-2] // 2) * 2, (x.shape[-1] // 2) * 2
    if h == 0 or w == 0:
        return torch.zeros(x.shape[0])
    x = x[..., :h, :w]
    hh = (x[..., 0::2, 0::2] - x[..., 0::2, 1::2] - x[..., 1::2, 0::2] + x[..., 1::2, 1::2]) / 2
    mad = hh.abs().flatten(2).median(dim=2).values  # (B,C)
    return (mad / 0.6745).mean(dim=1) * 127.5


def _dihedral(x: torch.Tensor, k: int) -> torch.Tensor:
    """The k-th of the 8 flips/rotations of (B,C,H,W) ``x`` (k=0 is the identity)."""
    if k >= 4:
        x = x.flip(-1)
    return torch.rot90(x, k % 4, dims=(-2, -1))


def _dihedral_inverse(x: torch.Tensor, k: int) -> torch.Tensor:
    x = torch.rot90(x, -(k % 4), dims=(-2, -1))
    return x.flip(-1) if k >= 4 else x


class SR3Pipeline(DiffusionPipeline):
    """Conditional image-to-image diffusion: ``cond`` (B,3,H,W) in [-1,1] → (B,3,H,W) in [-1,1].

    Config (saved in model_index.json, round-trips through from_pretrained):
    ``task`` "denoise" or "upscale"; ``factors`` the upscale factors it was trained for (the
    condition is the bicubic-upsampled low-res image, so one model serves every factor in the
    list); ``sigma_range`` the noise σ range (0–255 scale) a denoiser was trained on;
    ``tile_size``/``tile_overlap`` how any image size is processed; ``default_steps``;
    ``space_to_depth``, ``noise_map`` and ``scale_x_t`` as in the module docstring.
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
        space_to_depth: int = 1,
        noise_map: bool = False,
        scale_x_t: bool = False,
        self_ensemble: int = 1,
    ) -> None:
        super().__init__()
        if task not in TASKS:
            raise ValueError(f"task must be one of {TASKS}, got {task!r}")
        s = int(space_to_depth)
        expected_in = 6 * s * s + int(noise_map)
        if unet.config.in_channels != expected_in or unet.config.out_channels != 3 * s * s:
            raise ValueError(
                f"unet has {unet.config.in_channels}→{unet.config.out_channels} channels; with "
                f"space_to_depth={s} and noise_map={noise_map} it needs {expected_in}→{3 * s * s}"
            )
        self.register_modules(unet=unet, scheduler=scheduler)
        self.register_to_config(
            task=task,
            factors=[int(f) for f in (factors or [])],
            sigma_range=[float(v) for v in (sigma_range or [])],
            tile_size=int(tile_size),
            tile_overlap=int(tile_overlap),
            default_steps=int(default_steps),
            space_to_depth=s,
            noise_map=bool(noise_map),
            scale_x_t=bool(scale_x_t),
            self_ensemble=int(self_ensemble),
        )

    @property
    def multiple(self) -> int:
        """Spatial size multiple the model needs: one halving per down block after the first,
        times the space-to-depth factor."""
        levels = 2 ** (len(self.unet.config.block_out_channels) - 1)
        return levels * int(self.config.get("space_to_depth", 1))

    def supports(self, task: str, factor: int = 1) -> bool:
        """Whether this model was trained for `task` (and, for upscale, this `factor`)."""
        if task != self.config.task:
            return False
        return task != "upscale" or int(factor) in self.config.factors

    def predict_x0(self, x: torch.Tensor, cond: torch.Tensor, t: torch.Tensor,
                   sigma_map: torch.Tensor | None = None) -> torch.Tensor:  # fmt: skip
        """One network evaluation: the clean-image estimate for x_t at timesteps ``t`` (B,).

        ``sigma_map`` (B,1,H/s,W/s) is required when the model has a noise map. Training calls
        this too, so the network sees exactly the same inputs in training and in sampling.
        """
        s = int(self.config.get("space_to_depth", 1))
        if self.config.get("scale_x_t", False):
            # Input preconditioning: x_t times √ᾱ_t, its share of signal. At t = T-1 (the
            # default single step) x_t is pure noise and this input is ~0, so the network is a
            # plain regression from the condition instead of having to learn to ignore noise.
            ac = self.scheduler.alphas_cumprod.to(device=x.device)[t.long()]
            x = x * ac.sqrt().view(-1, 1, 1, 1).to(x.dtype)
        inp = torch.cat([x, cond], dim=1)
        if s > 1:
            inp = F.pixel_unshuffle(inp, s)
        if self.config.get("noise_map", False):
            if sigma_map is None:
                raise ValueError("this denoiser needs a noise map (σ)")
            inp = torch.cat([inp, sigma_map.to(inp.dtype)], dim=1)
        residual = self.unet(inp, t).sample
        if s > 1:
            residual = F.pixel_shuffle(residual, s)
        return cond + residual

    def _denoise_tiles(self, tiles: torch.Tensor) -> torch.Tensor:
        # tiles: (N,6[+1],h,w) = [x_T noise, cond, (σ map)]; the noise is a slice of one
        # full-image draw, so overlapping tiles start from the same noise and agree where they
        # overlap.
        x, cond = tiles[:, :3], tiles[:, 3:6]
        s = int(self.config.get("space_to_depth", 1))
        sigma_map = tiles[:, 6:7, ::s, ::s] if tiles.shape[1] > 6 else None
        x = x * self.scheduler.init_noise_sigma
        x0 = cond
        for t in self.scheduler.timesteps:
            tt = torch.full((x.shape[0],), int(t), device=x.device, dtype=torch.long)
            x0 = self.predict_x0(x, cond, tt, sigma_map).clamp(-1.0, 1.0)
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
        noise_level: float | None = None,
    ) -> torch.Tensor:
        """Restore a batch. One generator per image, so batch size never changes an image.

        ``num_inference_steps`` None uses the model's ``default_steps``. ``noise_level`` is the
        noise σ on the 0–255 scale for a denoiser with a noise map; None estimates it per image
        (other models ignore it).
        """
        if cond.ndim != 4 or cond.shape[1] != 3:
            raise ValueError(f"cond must be (B,3,H,W), got {tuple(cond.shape)}")
        if len(generator) != cond.shape[0]:
            raise ValueError(f"need one generator per image: {len(generator)} for {cond.shape[0]}")
        if noise_level is not None and not noise_level > 0:
            raise ValueError(f"noise_level must be a positive σ (0–255 scale), got {noise_level}")
        steps = int(num_inference_steps or self.config.default_steps)
        tile = int(tile_size or self.config.tile_size)
        overlap = int(tile_overlap if tile_overlap is not None else self.config.tile_overlap)
        device, dtype = self.unet.device, self.unet.dtype
        self.scheduler.set_timesteps(steps, device=device)
        outs = []
        for i, g in enumerate(generator):
            c = cond[i : i + 1].to(device=device, dtype=dtype)
            noise = randn_tensor(c.shape, generator=g, device=device, dtype=dtype)
            parts = [noise, c]
            if self.config.get("noise_map", False):
                sigma = (
                    float(noise_level)
                    if noise_level is not None
                    else float(estimate_noise_sigma(c)[0])
                )
                parts.append(torch.full_like(c[:, :1], sigma / SIGMA_SCALE))
            inp = torch.cat(parts, dim=1)
            n_views = max(1, int(self.config.get("self_ensemble", 1)))
            acc = None
            for k in range(n_views):
                view = tiled_apply(
                    _dihedral(inp, k),
                    self._denoise_tiles,
                    tile=tile,
                    overlap=overlap,
                    multiple=self.multiple,
                )
                view = _dihedral_inverse(view, k)
                acc = view if acc is None else acc + view
            assert acc is not None
            outs.append(acc / n_views)
        return torch.cat(outs).clamp(-1.0, 1.0).to(cond.device)
