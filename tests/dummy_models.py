"""Tiny diffusers pipelines built from configs and saved like real models (safetensors folders).

Each builder writes a folder and returns its path, so tests load them through the same
``load_pipeline`` -> ``from_pretrained`` path as real models. Random weights, seeded: outputs are
noise-like pictures, which is all the plumbing tests need.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
import torch
from diffusers import DDIMPipeline, DDIMScheduler, DDPMPipeline, DDPMScheduler, UNet2DModel
from PIL import Image

from augflow.schemas import (
    AugmentRequest,
    ShardSpec,
    SourceItem,
    WorkItem,
    iter_work_items,
    parse_request,
)


def tiny_unet(
    sample_size: int = 16,
    seed: int = 0,
    num_class_embeds: int | None = None,
    in_channels: int = 3,
    out_channels: int = 3,
) -> UNet2DModel:
    """A ~20k-parameter pixel UNet; ``in_channels=6`` for conditional models (x_t + condition),
    ``in_channels=out_channels=1`` for a grey one."""
    torch.manual_seed(seed)
    return UNet2DModel(
        sample_size=sample_size,
        in_channels=in_channels,
        out_channels=out_channels,
        layers_per_block=1,
        block_out_channels=(8, 16),
        norm_num_groups=4,
        down_block_types=("DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D"),
        num_class_embeds=num_class_embeds,
    )


def _scheduler(kind: str) -> DDPMScheduler | DDIMScheduler:
    # 100 training steps keeps timestep tables small; clip_sample matches what pixel models use.
    if kind == "ddim":
        return DDIMScheduler(num_train_timesteps=100, clip_sample=True)
    if kind == "ddpm":
        return DDPMScheduler(num_train_timesteps=100, clip_sample=True)
    raise ValueError(f"scheduler must be 'ddpm' or 'ddim', got {kind!r}")


def make_tiny_ddpm(
    path: str | Path,
    sample_size: int = 16,
    seed: int = 0,
    scheduler: str = "ddpm",
    num_class_embeds: int | None = None,
    channels: int = 3,
) -> Path:
    """A DDPMPipeline (or DDIMPipeline) folder with a ~20k-parameter UNet (``channels=1``: grey)."""
    path = Path(path)
    unet = tiny_unet(sample_size, seed, num_class_embeds, channels, channels)
    sched = _scheduler(scheduler)
    pipe_cls = DDIMPipeline if scheduler == "ddim" else DDPMPipeline
    pipe_cls(unet=unet, scheduler=sched).save_pretrained(path, safe_serialization=True)
    return path


def make_nan_model(path: str | Path) -> Path:
    """A saved model whose every output is NaN (conv_out bias is NaN)."""
    path = Path(path)
    unet = tiny_unet()
    with torch.no_grad():
        unet.conv_out.bias.fill_(float("nan"))
    DDPMPipeline(unet=unet, scheduler=_scheduler("ddpm")).save_pretrained(
        path, safe_serialization=True
    )
    return path


def make_black_model(path: str | Path) -> Path:
    """A saved model whose outputs are flat grey (pixel std 0).

    It predicts ``sample`` (x0) and its last layer is all zeros, so x0 == 0 at every step and the
    final DDIM step returns exactly 0 (mid grey) for any input and seed.
    """
    path = Path(path)
    unet = tiny_unet()
    with torch.no_grad():
        unet.conv_out.weight.zero_()
        unet.conv_out.bias.zero_()
    sched = DDIMScheduler(num_train_timesteps=100, clip_sample=True, prediction_type="sample")
    DDIMPipeline(unet=unet, scheduler=sched).save_pretrained(path, safe_serialization=True)
    return path


def make_tiny_sr3(path: str | Path, task: str = "upscale", seed: int = 0) -> Path:
    """An augflow SR3Pipeline folder (conditional: 6-channel UNet input) with random weights."""
    from augflow.models.sr3 import SR3Pipeline

    path = Path(path)
    unet = tiny_unet(sample_size=16, seed=seed, in_channels=6)
    sched = DDIMScheduler(prediction_type="sample", timestep_spacing="trailing")
    factors = [2, 4] if task == "upscale" else []
    pipe = SR3Pipeline(unet, sched, task=task, factors=factors, tile_size=16, tile_overlap=4)
    pipe.save_pretrained(path, safe_serialization=True)
    return path


def make_pickle_only_model(path: str | Path) -> Path:
    """A pipeline saved with pickle weights only (``diffusion_pytorch_model.bin``)."""
    path = Path(path)
    DDPMPipeline(unet=tiny_unet(), scheduler=_scheduler("ddpm")).save_pretrained(
        path, safe_serialization=False
    )
    return path


# --- requests and work items for tests that run these models ---------------------------------


def make_request(model: Path | str, operation: dict[str, Any], **fields: Any) -> AugmentRequest:
    data: dict[str, Any] = {
        "dataset": "test-set",
        "operation": operation,
        "model": {"id": str(model)},
        "steps": 4,
    }
    if operation["kind"] != "generate":
        data["inputs"] = "/tmp/inputs"
    for key, value in fields.items():
        if key == "scheduler":
            data["model"]["scheduler"] = value
        else:
            data[key] = value
    return parse_request(data)


def photo(w: int, h: int, seed: int = 0) -> Image.Image:
    """A smooth picture plus a little texture (not pure noise, so PSNR means something)."""
    yy, xx = np.mgrid[0:h, 0:w]
    rng = np.random.default_rng(seed)
    base = np.stack([xx * 255 / max(w - 1, 1), yy * 255 / max(h - 1, 1), np.full((h, w), 128)], -1)
    return Image.fromarray(np.clip(base + rng.normal(0, 8, base.shape), 0, 255).astype(np.uint8))


def noise_photo(w: int = 20, h: int = 12, seed: int = 0) -> Image.Image:
    """Uniform RGB noise of ``w`` x ``h``."""
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8))


def png_size(png: bytes | None) -> tuple[int, int]:
    """(w, h) of encoded PNG bytes."""
    if png is None:
        raise ValueError("no PNG")
    with Image.open(io.BytesIO(png)) as im:
        return im.size


def items_for(request: AugmentRequest, n_sources: int) -> list[WorkItem]:
    if request.operation.kind == "generate":
        shard = ShardSpec(shard_id="s0", index=0, first=0, count=request.operation.num_images)
    else:
        srcs = tuple(SourceItem(source_id=f"src-{i}", uri=f"mem://{i}") for i in range(n_sources))
        shard = ShardSpec(shard_id="s0", index=0, sources=srcs)
    return list(iter_work_items(request, shard))


# --- text-conditioned latent pipelines (Stable Diffusion family) ---------------------------------
#
# Every component is built from a config with a handful of channels so a save + load + 2-step call
# takes well under a second on CPU. The CLIP tokenizer is built from a vocab/merges pair written
# here (byte-level BPE: the 256 byte symbols, their end-of-word forms and two merges), so nothing is
# fetched from the hub.

TEXT_HIDDEN = 16


def _byte_symbols() -> list[str]:
    """The 256 printable stand-ins byte-level BPE uses for raw bytes (GPT-2's mapping)."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1)]
    keep += list(range(ord("®"), ord("ÿ") + 1))
    out, extra = {}, 0
    for b in range(256):
        if b in keep:
            out[b] = chr(b)
        else:
            out[b] = chr(256 + extra)
            extra += 1
    return [out[b] for b in range(256)]


def write_clip_tokenizer_files(folder: str | Path) -> tuple[Path, Path]:
    """A tiny byte-level BPE vocabulary that CLIPTokenizer accepts; returns (vocab, merges)."""
    import json

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    symbols = _byte_symbols()
    tokens = (
        symbols + [s + "</w>" for s in symbols] + ["ph", "pho", "<|startoftext|>", "<|endoftext|>"]
    )
    vocab = {tok: i for i, tok in enumerate(dict.fromkeys(tokens))}
    vocab_file, merges_file = folder / "vocab.json", folder / "merges.txt"
    vocab_file.write_text(json.dumps(vocab))
    merges_file.write_text("#version: 0.2\np h\nph o\n")
    return vocab_file, merges_file


def tiny_clip(folder: str | Path, seed: int = 0) -> tuple[Any, Any]:
    """(CLIPTextModel, CLIPTokenizer) with a 2-layer, 16-wide text encoder."""
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    vocab_file, merges_file = write_clip_tokenizer_files(folder)
    tokenizer = CLIPTokenizer(str(vocab_file), str(merges_file), model_max_length=77)
    torch.manual_seed(seed)
    config = CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=TEXT_HIDDEN,
        intermediate_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        max_position_embeddings=77,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return CLIPTextModel(config).eval(), tokenizer


def tiny_vae(
    seed: int = 0, blocks: int = 2, latent_channels: int = 4, sample_size: int = 32
) -> Any:
    """AutoencoderKL whose scale factor is 2**(blocks-1)."""
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * blocks,
        up_block_types=("UpDecoderBlock2D",) * blocks,
        block_out_channels=(8, 16, 16, 16)[:blocks],
        layers_per_block=1,
        latent_channels=latent_channels,
        norm_num_groups=4,
        sample_size=sample_size,
    )


def tiny_cond_unet(
    seed: int = 0,
    in_channels: int = 4,
    out_channels: int = 4,
    sample_size: int = 8,
    **extra: Any,
) -> Any:
    from diffusers import UNet2DConditionModel

    torch.manual_seed(seed)
    return UNet2DConditionModel(
        sample_size=sample_size,
        in_channels=in_channels,
        out_channels=out_channels,
        layers_per_block=1,
        block_out_channels=(8, 16),
        norm_num_groups=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=TEXT_HIDDEN,
        attention_head_dim=4,
        **extra,
    )


def _sd_scheduler() -> Any:
    return DDIMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
    )


def make_tiny_sd(path: str | Path, seed: int = 0, inpaint: bool = False) -> Path:
    """A StableDiffusionPipeline (or StableDiffusionInpaintPipeline, 9-channel UNet) folder.

    Native size 16 px: 8 latent px x VAE factor 2.
    """
    from diffusers import StableDiffusionInpaintPipeline, StableDiffusionPipeline

    path = Path(path)
    text_encoder, tokenizer = tiny_clip(path.parent / f".{path.name}-tok", seed)
    cls = StableDiffusionInpaintPipeline if inpaint else StableDiffusionPipeline
    pipe = cls(
        vae=tiny_vae(seed),
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=tiny_cond_unet(seed, in_channels=9 if inpaint else 4),
        scheduler=_sd_scheduler(),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(path, safe_serialization=True)
    return path


def make_tiny_sd_upscale_x4(path: str | Path, seed: int = 0) -> Path:
    """A StableDiffusionUpscalePipeline folder: 7-channel UNet (latent + low-res image), VAE x4."""
    from diffusers import StableDiffusionUpscalePipeline

    path = Path(path)
    text_encoder, tokenizer = tiny_clip(path.parent / f".{path.name}-tok", seed)
    vae = tiny_vae(seed, blocks=3)
    vae.register_to_config(scaling_factor=0.08333)  # what the real x4 model uses
    pipe = StableDiffusionUpscalePipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=tiny_cond_unet(seed, in_channels=7, num_class_embeds=351),
        low_res_scheduler=DDPMScheduler(),
        scheduler=DDIMScheduler(prediction_type="v_prediction", set_alpha_to_one=False),
        max_noise_level=350,
    )
    pipe.save_pretrained(path, safe_serialization=True)
    return path


def make_tiny_latent_upscale_x2(path: str | Path, seed: int = 0) -> Path:
    """A StableDiffusionLatentUpscalePipeline folder (8 channels in, 5 out, Karras conditioning)."""
    from diffusers import EulerDiscreteScheduler, StableDiffusionLatentUpscalePipeline

    path = Path(path)
    text_encoder, tokenizer = tiny_clip(path.parent / f".{path.name}-tok", seed)
    unet = tiny_cond_unet(
        seed,
        in_channels=8,
        out_channels=5,
        time_cond_proj_dim=128 + TEXT_HIDDEN,
        resnet_time_scale_shift="scale_shift",
        time_embedding_type="fourier",
        timestep_post_act="gelu",
        conv_in_kernel=1,
        conv_out_kernel=1,
    )
    pipe = StableDiffusionLatentUpscalePipeline(
        vae=tiny_vae(seed),
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=EulerDiscreteScheduler(prediction_type="sample"),
    )
    pipe.save_pretrained(path, safe_serialization=True)
    return path


def make_tiny_ldm_sr(path: str | Path, seed: int = 0) -> Path:
    """An LDMSuperResolutionPipeline folder: VQModel x4 and a 6-channel pixel-latent UNet."""
    from diffusers import LDMSuperResolutionPipeline, VQModel

    path = Path(path)
    torch.manual_seed(seed)
    vqvae = VQModel(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 3,
        up_block_types=("UpDecoderBlock2D",) * 3,
        block_out_channels=(8, 16, 16),
        layers_per_block=1,
        latent_channels=3,
        norm_num_groups=4,
        num_vq_embeddings=32,
    )
    unet = tiny_unet(sample_size=8, seed=seed, in_channels=6)
    LDMSuperResolutionPipeline(
        vqvae=vqvae, unet=unet, scheduler=DDIMScheduler(set_alpha_to_one=False)
    ).save_pretrained(path, safe_serialization=True)
    return path
