"""Broken models for the quality gate's tests: each does one thing wrong, deterministically.

Every builder writes a diffusers folder with ``save_pretrained(..., safe_serialization=True)`` and
returns its path, so the model loads through ``augflow.models.loading.load_pipeline`` like any
other. The weights are *constructed*, not trained: most of these networks are made exactly linear
so that they compute a chosen image operation (a blur, a fixed picture) rather than noise.

How a diffusers UNet is made to compute a linear function of its input:

- every ResNet block's last convolution is zero, so the block is its skip path (identity, or its
  1×1 shortcut convolution, which we set);
- down-samplers (3×3 stride-2 conv) and up-samplers (nearest ×2 then 3×3 conv) get a [1 2 1]²/16
  smoothing kernel per channel — a blur pyramid;
- the one non-linear stage left is the output ``GroupNorm → SiLU``. Each group holds four
  channels ``(x, −x, K, −K)`` with K = 100: the group's mean is exactly 0 and its standard
  deviation √((x̄² + K²)/2) ≈ K/√2 whatever x is (relative error < 10⁻⁴), so GroupNorm divides by
  a constant; a bias of 20 puts SiLU in its linear range (SiLU(20 + z) − SiLU(20 − z) = 2z to
  ~10⁻⁸); the output convolution takes ``(std/2)·(ch(x) − ch(−x))`` = x.

This needs float32 (the CPU default); in float16 the constant K swamps x.

Builders:
- :func:`make_noop_denoiser` — SR3 with all-zero weights: returns its condition (the noisy input).
- :func:`make_blur_sr3` — SR3 whose UNet computes ``blur(cond) − cond``: blurs everything.
- :func:`make_color_cast_sr3` — the bundled SR3 denoiser plus a per-channel offset on its output.
- :func:`make_same_image_generator` — a text-to-image pipeline that draws one fixed picture.
- :func:`make_copying_generator` — draws reference image k for prompt k (memorisation).
- :func:`make_identity_img2img` — a pixel DDIM model whose noise schedule never adds noise, so
  SDEdit returns its input.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from diffusers import DDIMPipeline, DDIMScheduler, UNet2DModel
from dummy_models import tiny_clip, tiny_unet

BUNDLED = Path(__file__).resolve().parents[1] / "models" / "bundled"
#: The constant channels that make GroupNorm's statistics independent of the signal.
_K = 100.0
#: SiLU(_BIAS + z) is linear in z to ~1e-8 for |z| ≪ 1.
_BIAS = 20.0
_STD = math.sqrt(_K * _K / 2.0)


def _zero_(module: torch.nn.Module) -> None:
    with torch.no_grad():
        for p in module.parameters():
            p.zero_()


def _smoothing_kernel() -> torch.Tensor:
    k = torch.tensor([1.0, 2.0, 1.0])
    return (k[:, None] * k[None, :]) / 16.0


def _depthwise_(conv: torch.nn.Conv2d, kernel: torch.Tensor) -> None:
    """Set a conv (C→C, 3×3) to apply ``kernel`` to every channel separately."""
    with torch.no_grad():
        conv.weight.zero_()
        conv.bias.zero_()
        for c in range(conv.out_channels):
            conv.weight[c, c] = kernel


def _linear_output_(norm: torch.nn.GroupNorm, conv_out: torch.nn.Conv2d, n_signals: int) -> None:
    """GroupNorm → SiLU → conv_out made linear for signals in channels 4k (x) and 4k+1 (−x)."""
    with torch.no_grad():
        norm.weight.fill_(1.0)
        norm.bias.fill_(_BIAS)
        conv_out.weight.zero_()
        conv_out.bias.zero_()
        centre = conv_out.kernel_size[0] // 2
        for k in range(n_signals):
            conv_out.weight[k, 4 * k, centre, centre] = _STD / 2.0
            conv_out.weight[k, 4 * k + 1, centre, centre] = -_STD / 2.0


# --- denoisers ---------------------------------------------------------------------------------


def make_noop_denoiser(path: str | Path) -> Path:
    """An SR3 denoiser whose UNet weights are all zero: the residual is 0, so it returns its
    condition — the noisy input, unchanged."""
    from augflow.models.sr3 import SR3Pipeline

    path = Path(path)
    unet = tiny_unet(sample_size=16, in_channels=6)
    _zero_(unet)
    sched = DDIMScheduler(prediction_type="sample", timestep_spacing="trailing")
    SR3Pipeline(unet, sched, task="denoise", sigma_range=[10.0, 50.0]).save_pretrained(
        path, safe_serialization=True
    )
    return path


def blur_unet(levels: int = 3) -> UNet2DModel:
    """A 6→3 UNet computing ``blur(cond) − cond`` (cond = input channels 3..5) exactly.

    The blur is a ``levels``-deep pyramid: smooth and halve, then double and smooth, ``levels``
    times ([1 2 1]² kernels, zero padding, so image borders fade). Three levels wipe out detail
    finer than about 8 px.
    """
    width = 12  # three colour groups of (x, −x, K, −K)
    unet = UNet2DModel(
        sample_size=64,
        in_channels=6,
        out_channels=3,
        block_out_channels=(width,) * (levels + 1),
        layers_per_block=1,
        down_block_types=("DownBlock2D",) * (levels + 1),
        up_block_types=("UpBlock2D",) * (levels + 1),
        norm_num_groups=3,
        add_attention=False,
    )
    _zero_(unet)
    kernel = _smoothing_kernel()
    with torch.no_grad():
        for c in range(3):
            unet.conv_in.weight[4 * c, 3 + c, 1, 1] = 1.0
            unet.conv_in.weight[4 * c + 1, 3 + c, 1, 1] = -1.0
            unet.conv_in.bias[4 * c + 2] = _K
            unet.conv_in.bias[4 * c + 3] = -_K
        for block in unet.down_blocks:
            for down in block.downsamplers or []:
                _depthwise_(down.conv, kernel)
        for block in unet.up_blocks:
            for up in block.upsamplers or []:
                _depthwise_(up.conv, kernel)
            for resnet in block.resnets:
                sc = resnet.conv_shortcut  # 1×1 over cat([h, skip])
                sc.weight.zero_()
                sc.bias.zero_()
                for ch in range(width):
                    sc.weight[ch, ch, 0, 0] = 1.0
        # The very last resnet sees the full-resolution conv_in output as its skip: there the
        # signal becomes h − skip = blur(cond) − cond, and the K channels are taken unblurred.
        last = unet.up_blocks[-1].resnets[-1].conv_shortcut
        for c in range(3):
            last.weight[4 * c, width + 4 * c, 0, 0] = -1.0
            last.weight[4 * c + 1, width + 4 * c + 1, 0, 0] = -1.0
            for ch in (4 * c + 2, 4 * c + 3):
                last.weight[ch, ch, 0, 0] = 0.0
                last.weight[ch, width + ch, 0, 0] = 1.0
    _linear_output_(unet.conv_norm_out, unet.conv_out, 3)
    return unet


def make_blur_sr3(path: str | Path, task: str = "denoise", levels: int = 3) -> Path:
    """An SR3 pipeline that blurs everything: denoise returns ``blur(noisy)`` (mush), upscale a
    blurred bicubic enlargement. One 256-px tile, so only the image's own borders fade."""
    from augflow.models.sr3 import SR3Pipeline

    path = Path(path)
    sched = DDIMScheduler(prediction_type="sample", timestep_spacing="trailing")
    factors = [2, 4] if task == "upscale" else []
    SR3Pipeline(
        blur_unet(levels), sched, task=task, factors=factors, tile_size=256, tile_overlap=32
    ).save_pretrained(path, safe_serialization=True)
    return path


def make_color_cast_sr3(
    path: str | Path,
    shift: Sequence[float] = (0.25, 0.0, -0.25),
    base: str | Path | None = None,
) -> Path:
    """The bundled SR3 denoiser (or ``base``) with ``shift`` (in [−1, 1] units, so 0.25 is 32
    levels of 255) added to every output pixel: it denoises well and casts a colour."""
    from augflow.models.sr3 import SR3Pipeline

    path = Path(path)
    pipe = SR3Pipeline.from_pretrained(base or BUNDLED / "sr3-denoise", use_safetensors=True)
    # With space_to_depth s the UNet's 3·s² output channels are pixel-shuffled into RGB: channel
    # c·s² + k lands in colour c.
    s2 = int(pipe.config.get("space_to_depth", 1)) ** 2
    offset = torch.tensor(
        [v for v in shift for _ in range(s2)], dtype=pipe.unet.conv_out.bias.dtype
    )
    with torch.no_grad():
        pipe.unet.conv_out.bias += offset
    pipe.save_pretrained(path, safe_serialization=True)
    return path


# --- generators that draw fixed pictures ---------------------------------------------------------


def _window_sum_weights(target: np.ndarray) -> torch.Tensor:
    """Kernel W (2n−1)² such that conv2d(ones(n, n), W, padding=n−1) == target (n, n).

    With zero padding, output pixel (i, j) sums the kernel over a window whose top-left corner
    depends on (i, j); putting the 2-D differences of the target in the kernel's top-left quadrant
    (flipped) makes those window sums the target's cumulative sums back, i.e. the target."""
    n = target.shape[0]
    diff = np.diff(np.diff(np.pad(target, ((1, 0), (1, 0))), axis=0), axis=1)
    w = np.zeros((2 * n - 1, 2 * n - 1), dtype=np.float64)
    w[:n, :n] = diff[::-1, ::-1]
    return torch.from_numpy(w.astype(np.float32))


def _linear_vae(size: int):
    """AutoencoderKL (one block, latent = image size) whose decoder maps latent channels 0..2 to
    RGB unchanged. Its encoder is all zeros: this VAE is only for generation."""
    from diffusers import AutoencoderKL

    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",),
        up_block_types=("UpDecoderBlock2D",),
        block_out_channels=(12,),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=3,
        sample_size=size,
        mid_block_add_attention=False,
        scaling_factor=1.0,
    )
    _zero_(vae)
    with torch.no_grad():
        if vae.post_quant_conv is not None:
            for c in range(4):
                vae.post_quant_conv.weight[c, c, 0, 0] = 1.0
        dec = vae.decoder
        for c in range(3):
            dec.conv_in.weight[4 * c, c, 1, 1] = 1.0
            dec.conv_in.weight[4 * c + 1, c, 1, 1] = -1.0
            dec.conv_in.bias[4 * c + 2] = _K
            dec.conv_in.bias[4 * c + 3] = -_K
    _linear_output_(dec.conv_norm_out, dec.conv_out, 3)
    return vae


def _drawing_unet(images: Sequence[np.ndarray], text_dim: int, selected: bool):
    """UNet2DConditionModel whose output latent is ``Σ_k v_k · image_k`` for a constant vector v.

    Every path from its inputs is zero except: ``conv_in``'s bias (the K channels, and v = e_0
    when not ``selected``) and, when ``selected``, the mid block's cross-attention, whose query
    is zero (uniform attention over the prompt tokens) so it adds a prompt-dependent constant to
    every pixel (set later by :func:`_fit_selection`). ``conv_out`` has a (2n−1)² kernel that
    draws image k from the constant channel k."""
    from diffusers import UNet2DConditionModel

    n = images[0].shape[0]
    count = len(images)
    width = 4 * max(count, 2)
    unet = UNet2DConditionModel(
        sample_size=n,
        in_channels=4,
        out_channels=4,
        layers_per_block=1,
        block_out_channels=(width,),
        down_block_types=("DownBlock2D",),
        up_block_types=("UpBlock2D",),
        mid_block_type="UNetMidBlock2DCrossAttn",
        cross_attention_dim=text_dim,
        attention_head_dim=4,
        norm_num_groups=width // 4,
        conv_out_kernel=2 * n - 1,
        # An LCM-style guidance embedding turns classifier-free guidance off in the pipeline, so
        # the drawn picture is what comes out whatever guidance_scale a request sets.
        time_cond_proj_dim=8,
    )
    _zero_(unet)
    with torch.no_grad():
        for k in range(width // 4):
            unet.conv_in.bias[4 * k + 2] = _K
            unet.conv_in.bias[4 * k + 3] = -_K
        if not selected:
            unet.conv_in.bias[0] = 1.0
            unet.conv_in.bias[1] = -1.0
        for resnet in unet.up_blocks[0].resnets:
            sc = resnet.conv_shortcut
            for ch in range(width):
                sc.weight[ch, ch, 0, 0] = 1.0
        unet.conv_norm_out.weight.fill_(1.0)
        unet.conv_norm_out.bias.fill_(_BIAS)
        for k, img in enumerate(images):
            latent = img.astype(np.float64) / 127.5 - 1.0  # (n, n, 3) in [-1, 1]
            for c in range(3):
                w = _window_sum_weights(latent[:, :, c] * _STD / 2.0)
                unet.conv_out.weight[c, 4 * k] = w
                unet.conv_out.weight[c, 4 * k + 1] = -w
    return unet


def _fit_selection(unet, text_encoder, tokenizer, prompts: Sequence[str]) -> None:
    """Make prompt k switch on image k: the mid block's cross-attention output (uniform weights,
    so the mean over the 77 tokens of the value projection) is an affine function of the mean
    token embedding ē; solve [W | b] [ē_k; 1] = e_k exactly (least squares, K ≤ dim + 1)."""
    with torch.no_grad():
        tokens = tokenizer(
            list(prompts),
            padding="max_length",
            max_length=tokenizer.model_max_length,
            truncation=True,
            return_tensors="pt",
        )
        hidden = text_encoder(tokens.input_ids)[0].double()  # (K, 77, dim)
        mean = hidden.mean(dim=1)  # (K, dim)
        design = torch.cat([mean, torch.ones(len(prompts), 1, dtype=torch.float64)], dim=1)
        solution = torch.linalg.pinv(design) @ torch.eye(len(prompts), dtype=torch.float64)
        w, b = solution[:-1].T, solution[-1]  # (K, dim), (K,)
        residual = float((design @ solution - torch.eye(len(prompts))).abs().max())
        if residual > 1e-6:
            raise ValueError(f"prompts are not separable by the text encoder (residual {residual})")
        block = unet.mid_block.attentions[0]
        attn = block.transformer_blocks[0].attn2
        width = unet.config.block_out_channels[0]
        eye = torch.eye(width)
        attn.to_out[0].weight.copy_(eye)
        block.proj_out.weight.copy_(eye.view(width, width, 1, 1))
        for k in range(len(prompts)):
            attn.to_v.weight[4 * k] = w[k].float()
            attn.to_v.weight[4 * k + 1] = -w[k].float()
            attn.to_out[0].bias[4 * k] = float(b[k])
            attn.to_out[0].bias[4 * k + 1] = -float(b[k])


def _drawing_pipeline(
    path: Path, images: Sequence[np.ndarray], prompts: Sequence[str] | None, seed: int
) -> Path:
    from diffusers import StableDiffusionPipeline

    images = [np.asarray(im, dtype=np.uint8) for im in images]
    n = images[0].shape[0]
    if any(im.shape != (n, n, 3) for im in images) or n % 8:
        raise ValueError("images must all be (n, n, 3) uint8 with n a multiple of 8")
    text_encoder, tokenizer = tiny_clip(path.parent / f".{path.name}-tok", seed)
    unet = _drawing_unet(images, text_encoder.config.hidden_size, selected=prompts is not None)
    if prompts is not None:
        if len(prompts) != len(images):
            raise ValueError(f"{len(prompts)} prompts for {len(images)} images")
        _fit_selection(unet, text_encoder, tokenizer, prompts)
    scheduler = DDIMScheduler(
        prediction_type="sample",
        set_alpha_to_one=True,
        clip_sample=False,
        timestep_spacing="trailing",
        steps_offset=1,
    )
    StableDiffusionPipeline(
        vae=_linear_vae(n),
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    ).save_pretrained(path, safe_serialization=True)
    return path


def make_same_image_generator(path: str | Path, image: np.ndarray, seed: int = 0) -> Path:
    """A text-to-image pipeline that returns ``image`` (n×n×3 uint8) for every seed and prompt."""
    return _drawing_pipeline(Path(path), [image], None, seed)


def make_copying_generator(
    path: str | Path, references: Sequence[np.ndarray], prompts: Sequence[str], seed: int = 0
) -> Path:
    """A text-to-image pipeline that returns ``references[k]`` for ``prompts[k]`` — a generator
    that memorised its training images. Generate with those prompts (any guidance scale)."""
    return _drawing_pipeline(Path(path), references, list(prompts), seed)


# --- img2img -------------------------------------------------------------------------------------


def make_identity_img2img(path: str | Path, sample_size: int = 32) -> Path:
    """A pixel DDIM model whose noise schedule adds almost no noise (β = 1e-7 over 100 steps:
    at most 0.4 levels of 255) and whose UNet predicts zero noise: SDEdit returns its input."""
    path = Path(path)
    unet = tiny_unet(sample_size=sample_size)
    _zero_(unet)
    sched = DDIMScheduler(
        num_train_timesteps=100, beta_start=1e-7, beta_end=1e-7, beta_schedule="linear",
        clip_sample=False,
    )  # fmt: skip
    DDIMPipeline(unet=unet, scheduler=sched).save_pretrained(path, safe_serialization=True)
    return path
