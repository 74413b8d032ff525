"""Speed settings (models/speed.py): the request's compute section resolved per device, and what
apply_speedups does to a real (tiny) Stable Diffusion pipeline."""

from __future__ import annotations

from pathlib import Path

import pytest
from dummy_models import items_for, make_request, png_size

from augflow.models.runner import AugmentModel
from augflow.models.speed import SpeedOptions, cpu_micro_batch, unet_pixels
from augflow.schemas.request import ComputeSpec


def test_defaults_per_device() -> None:
    cpu = SpeedOptions.resolve(ComputeSpec(), "cpu")
    assert (cpu.micro_batch, cpu.channels_last, cpu.compile_backend) == (4, False, None)
    cuda = SpeedOptions.resolve(ComputeSpec(), "cuda:0")
    assert (cuda.micro_batch, cuda.channels_last, cuda.compile_backend) == (8, True, None)
    # CUDA's default is the same whatever the UNet; the CPU one follows the UNet's pixels
    assert SpeedOptions.resolve(ComputeSpec(), "cuda", unet_pixels=32 * 32).micro_batch == 8


@pytest.mark.parametrize(
    ("pixels", "micro"),
    [(None, 4), (16 * 16, 16), (32 * 32, 16), (64 * 64, 4), (96 * 96, 1), (128 * 128, 1)],
)
def test_cpu_default_gives_a_unet_about_16k_pixels_per_call(pixels: int | None, micro: int) -> None:
    assert cpu_micro_batch(pixels) == micro
    assert SpeedOptions.resolve(ComputeSpec(), "cpu", unet_pixels=pixels).micro_batch == micro


def test_cpu_default_micro_batch_ignores_the_machine(
    ddpm_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Bytes follow the micro-batch, so its default may depend on the request and the model only:
    # not on the cores, the torch threads or the load of whichever machine computes.
    import os

    import torch

    req = make_request(ddpm_dir, {"kind": "generate", "num_images": 2})
    threads = torch.get_num_threads()
    seen = set()
    try:
        for cores, n_threads, load in ((1, 1, 30.0), (64, 2, 0.0)):
            monkeypatch.setattr(os, "cpu_count", lambda c=cores: c)
            monkeypatch.setattr(os, "sched_getaffinity", lambda _p, c=cores: set(range(c)))
            monkeypatch.setattr(os, "getloadavg", lambda x=load: (x, x, x))
            torch.set_num_threads(n_threads)
            model = AugmentModel(req, "cpu")
            seen.add((model.micro_batch, model.speed_settings["micro_batch"]))
    finally:
        torch.set_num_threads(threads)
    assert seen == {(16, 16)}  # the 16x16 UNet's default, on both "machines"


def test_unet_pixels_follow_the_config_and_the_requested_size(ddpm_dir: Path, sd_dir: Path) -> None:
    pixel = AugmentModel(make_request(ddpm_dir, {"kind": "generate", "num_images": 1}), "cpu")
    assert unet_pixels(pixel.pipeline, None) == 16 * 16
    assert unet_pixels(pixel.pipeline, 32) == 32 * 32  # a pixel UNet sees the image itself
    latent = AugmentModel(make_request(sd_dir, {"kind": "generate", "num_images": 1}), "cpu")
    side = latent.pipeline.unet.config.sample_size
    assert unet_pixels(latent.pipeline, None) == side * side
    scale = latent.pipeline.vae_scale_factor
    assert unet_pixels(latent.pipeline, 8 * scale) == 64  # latent models: the latent's pixels
    assert unet_pixels(object(), 64) is None


def test_request_values_win_over_defaults() -> None:
    spec = ComputeSpec(micro_batch=3, channels_last=False, compile="inductor")
    cuda = SpeedOptions.resolve(spec, "cuda")
    assert (cuda.micro_batch, cuda.channels_last, cuda.compile_backend) == (3, False, "inductor")
    cpu = SpeedOptions.resolve(ComputeSpec(channels_last=True, micro_batch=1), "cpu", 16 * 16)
    assert cpu.channels_last and cpu.micro_batch == 1


def test_compute_is_part_of_the_request_hash(ddpm_dir: Path) -> None:
    op = {"kind": "generate", "num_images": 1}
    hashes = {
        make_request(ddpm_dir, op, compute=c).request_hash
        for c in ({}, {"micro_batch": 2}, {"channels_last": True}, {"compile": "eager"})
    }
    assert len(hashes) == 4


def test_sdpa_attention_and_vae_slicing_by_default(sd_dir: Path) -> None:
    model = AugmentModel(make_request(sd_dir, {"kind": "generate", "num_images": 1}), "cpu")
    assert model.speed_settings["attention"] == ["AttnProcessor2_0"]
    assert model.speed_settings.get("vae_slicing") is True
    assert "channels_last" not in model.speed_settings  # off on CPU by default
    assert "compile" not in model.speed_settings
    assert model.speed_settings["micro_batch"] == cpu_micro_batch(unet_pixels(model.pipeline, None))


@pytest.mark.parametrize("fixture", ["sd_dir", "ddpm_dir"])
def test_channels_last_and_compile_run_on_cpu(request: pytest.FixtureRequest, fixture: str) -> None:
    folder = request.getfixturevalue(fixture)
    req = make_request(
        folder,
        {"kind": "generate", "num_images": 1},
        steps=2,
        # eager: dynamo tracing without inductor's code generation, quick on CPU
        compute={"channels_last": True, "compile": "eager"},
    )
    model = AugmentModel(req, "cpu")
    assert model.speed_settings["channels_last"] is True
    assert model.speed_settings["compile"] == "eager"
    assert type(model.task_pipeline.unet).__name__ == "OptimizedModule"
    out = model(items_for(req, 0), [None])[0]
    assert out.error is None and png_size(out.png) == (16, 16)
    # a warm actor's next request reuses the loaded pipeline and the compiled UNet with it
    again = AugmentModel(req, "cpu", loaded=model.loaded)
    assert again.task_pipeline.unet is model.task_pipeline.unet
    assert again(items_for(req, 0), [None])[0].png == out.png
