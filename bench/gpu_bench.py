"""Throughput of augflow's runner vs a bare diffusers call, SD-1.5-sized UNet, random weights.

    python bench/gpu_bench.py                      # SD-1.5 UNet, 512², 25 steps, batch 8, CUDA
    python bench/gpu_bench.py --batch-size 16 --compile
    python bench/gpu_bench.py --smoke              # tiny CPU version, seconds (run in CI)

Both sides load the same safetensors folder, run the same batch size, steps, guidance and fp16 (on
CUDA), and make the same number of images; the first batch of each is a warm-up and not timed.
Model-FLOPs utilisation counts only the UNet (text encoder and VAE are a few % of an SD call):
UNet FLOPs per image = FLOPs of one UNet forward x 2 (classifier-free guidance) x steps, measured
with ``torch.utils.flop_counter``; MFU = achieved UNet FLOP/s / the device's dense fp16 peak.
Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

#: dense fp16/bf16 tensor-core peaks (TFLOP/s) of devices we expect to meet
PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0, "L4": 121.0, "A10": 125.0}


def build_model(folder: Path, smoke: bool, dtype: torch.dtype) -> Path:
    """A StableDiffusionPipeline folder: SD-1.5 shapes (or tiny ones for --smoke), random weights."""
    from diffusers import (
        AutoencoderKL,
        DDIMScheduler,
        StableDiffusionPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from dummy_models import write_clip_tokenizer_files

    vocab, merges = write_clip_tokenizer_files(folder.parent / "tok")
    tokenizer = CLIPTokenizer(str(vocab), str(merges), model_max_length=77)
    torch.manual_seed(0)
    if smoke:
        unet_kw: dict[str, Any] = dict(
            sample_size=8,
            block_out_channels=(8, 16),
            layers_per_block=1,
            norm_num_groups=4,
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
            cross_attention_dim=16,
            attention_head_dim=4,
        )
        text = dict(
            hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2
        )
        vae_kw: dict[str, Any] = dict(
            block_out_channels=(8, 16),
            down_block_types=("DownEncoderBlock2D",) * 2,
            up_block_types=("UpDecoderBlock2D",) * 2,
            norm_num_groups=4,
        )
    else:  # the shapes of runwayml/stable-diffusion-v1-5
        unet_kw = dict(sample_size=64, cross_attention_dim=768, attention_head_dim=8)
        text = dict(
            hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12
        )
        vae_kw = dict(
            block_out_channels=(128, 256, 512, 512),
            down_block_types=("DownEncoderBlock2D",) * 4,
            up_block_types=("UpDecoderBlock2D",) * 4,
            layers_per_block=2,
        )
    unet = UNet2DConditionModel(in_channels=4, out_channels=4, **unet_kw)
    vae = AutoencoderKL(latent_channels=4, sample_size=64 if smoke else 512, **vae_kw)
    te = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(tokenizer),
            max_position_embeddings=77,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
            **text,
        )
    )
    sched = DDIMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
    )
    pipe = StableDiffusionPipeline(
        vae=vae,
        text_encoder=te,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=sched,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.to(dtype=dtype).save_pretrained(folder, safe_serialization=True)
    return folder


def unet_flops_per_image(
    unet: Any, size: int, vae_scale: int, device: str, dtype: torch.dtype
) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    lat = size // vae_scale
    x = torch.randn(2, unet.config.in_channels, lat, lat, device=device, dtype=dtype)  # CFG pair
    ctx = torch.randn(2, 77, unet.config.cross_attention_dim, device=device, dtype=dtype)
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        unet(x, torch.tensor(500, device=device), encoder_hidden_states=ctx)
    return float(counter.get_total_flops())


def peak_flops(device: str, override: float | None) -> float | None:
    if override:
        return override * 1e12
    if not device.startswith("cuda"):
        return None
    name = torch.cuda.get_device_name()
    for key, tflops in PEAK_TFLOPS.items():
        if key in name:
            return tflops * 1e12
    return None


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def bench_augflow(folder: Path, args: argparse.Namespace, device: str) -> float:
    from augflow.models.runner import AugmentModel
    from augflow.schemas import ShardSpec, iter_work_items, parse_request

    n = args.batch_size * (args.batches + 1)
    request = parse_request(
        {
            "dataset": "bench",
            "operation": {"kind": "generate", "num_images": n, "prompts": ["a photo of a cat"]},
            "model": {"id": str(folder)},
            "steps": args.steps,
            "guidance_scale": 7.5,
            "image_size": args.size,
            "compute": {
                "micro_batch": args.batch_size,
                "compile": "inductor" if args.compile else None,
            },
        }
    )
    model = AugmentModel(request, device, encode_threads=args.encode_threads)
    items = list(iter_work_items(request, ShardSpec(shard_id="s", index=0, first=0, count=n)))
    batches = [items[i : i + args.batch_size] for i in range(0, n, args.batch_size)]
    model(batches[0], [None] * len(batches[0]))  # warm-up (and compile, if on)
    _sync(device)
    t = time.perf_counter()
    # as a shard worker does: every batch computes while earlier ones encode (encode_threads > 0)
    pending = [model.submit(b, [None] * len(b)) for b in batches[1:]]
    for p in pending:
        outs = p.result()
        if any(o.error for o in outs):
            raise RuntimeError(f"augflow run failed: {outs[0].error}")
    _sync(device)
    return args.batch_size * args.batches / (time.perf_counter() - t)


def bench_bare(folder: Path, args: argparse.Namespace, device: str, dtype: torch.dtype) -> float:
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(
        str(folder), dtype=dtype, use_safetensors=True, local_files_only=True
    ).to(device)
    pipe.set_progress_bar_config(disable=True)

    def run(seed: int) -> None:
        gens = [torch.Generator(device).manual_seed(seed + i) for i in range(args.batch_size)]
        pipe(
            ["a photo of a cat"] * args.batch_size,
            height=args.size,
            width=args.size,
            num_inference_steps=args.steps,
            guidance_scale=7.5,
            generator=gens,
            output_type="pt",
        )

    run(0)
    _sync(device)
    t = time.perf_counter()
    for k in range(args.batches):
        run(1000 * (k + 1))
    _sync(device)
    return args.batch_size * args.batches / (time.perf_counter() - t)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--smoke", action="store_true", help="tiny CPU version (seconds)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--batches", type=int, default=3, help="timed batches per side")
    p.add_argument("--steps", type=int, default=25)
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--device", default="auto")
    p.add_argument(
        "--compile", action="store_true", help="compile augflow's UNet (compute.compile)"
    )
    p.add_argument("--peak-tflops", type=float, default=None, help="override the device peak")
    p.add_argument(
        "--encode-threads",
        type=int,
        default=None,
        help="PNG encode threads overlapping compute (default: cores - 1 on CUDA, 0 on CPU)",
    )
    args = p.parse_args(argv)
    if args.smoke:
        args.batch_size, args.batches, args.steps, args.size = 2, 1, 2, 16
        args.device = "cpu" if args.device == "auto" else args.device
    device = (
        args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    )
    dtype = torch.float16 if device.startswith("cuda") else torch.float32
    if args.encode_threads is None:
        cores = len(os.sched_getaffinity(0))
        args.encode_threads = max(1, min(8, cores - 1)) if device.startswith("cuda") else 0
    with tempfile.TemporaryDirectory() as tmp:
        folder = build_model(Path(tmp) / "sd", args.smoke, dtype)
        from diffusers import UNet2DConditionModel

        unet = UNet2DConditionModel.from_pretrained(folder / "unet", dtype=dtype).to(device)
        vae_scale = 2 if args.smoke else 8
        flops_img = unet_flops_per_image(unet, args.size, vae_scale, device, dtype) * args.steps
        del unet
        bare = bench_bare(folder, args, device, dtype)
        ours = bench_augflow(folder, args, device)
    peak = peak_flops(device, args.peak_tflops)
    result = {
        "device": torch.cuda.get_device_name() if device.startswith("cuda") else "cpu",
        "dtype": str(dtype).removeprefix("torch."),
        "size": args.size,
        "steps": args.steps,
        "batch_size": args.batch_size,
        "compile": args.compile,
        "encode_threads": args.encode_threads,
        "unet_gflops_per_image": round(flops_img / 1e9, 3),
        "augflow_images_per_s": round(ours, 4),
        "bare_diffusers_images_per_s": round(bare, 4),
        "augflow_vs_bare": round(ours / bare, 3),
        "augflow_mfu": None if peak is None else round(ours * flops_img / peak, 4),
        "bare_mfu": None if peak is None else round(bare * flops_img / peak, 4),
    }
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
