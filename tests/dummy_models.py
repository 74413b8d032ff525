"""Tiny diffusers pipelines built from configs and saved like real models (safetensors folders).

Each builder writes a folder and returns its path, so tests load them through the same
``load_pipeline`` -> ``from_pretrained`` path as real models. Random weights, seeded: outputs are
noise-like pictures, which is all the plumbing tests need.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from diffusers import DDIMPipeline, DDIMScheduler, DDPMPipeline, DDPMScheduler, UNet2DModel

from augflow.schemas import (
    AugmentRequest,
    ShardSpec,
    SourceItem,
    WorkItem,
    iter_work_items,
    parse_request,
)


def tiny_unet(
    sample_size: int = 16, seed: int = 0, num_class_embeds: int | None = None
) -> UNet2DModel:
    torch.manual_seed(seed)
    return UNet2DModel(
        sample_size=sample_size,
        in_channels=3,
        out_channels=3,
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
) -> Path:
    """A DDPMPipeline (or DDIMPipeline) folder with a ~20k-parameter UNet."""
    path = Path(path)
    unet = tiny_unet(sample_size, seed, num_class_embeds)
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
    torch.manual_seed(seed)
    unet = UNet2DModel(
        sample_size=16,
        in_channels=6,
        out_channels=3,
        layers_per_block=1,
        block_out_channels=(8, 16),
        norm_num_groups=4,
        down_block_types=("DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D"),
    )
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


def items_for(request: AugmentRequest, n_sources: int) -> list[WorkItem]:
    if request.operation.kind == "generate":
        shard = ShardSpec(shard_id="s0", index=0, first=0, count=request.operation.num_images)
    else:
        srcs = tuple(SourceItem(source_id=f"src-{i}", uri=f"mem://{i}") for i in range(n_sources))
        shard = ShardSpec(shard_id="s0", index=0, sources=srcs)
    return list(iter_work_items(request, shard))
