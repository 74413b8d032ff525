"""SR3Pipeline with a tiny random UNet: contract, config round-trip, determinism, any size."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from diffusers import DDIMScheduler, UNet2DModel

from augflow.models.sr3 import SR3Pipeline, estimate_noise_sigma


def tiny_pipe(task: str = "upscale") -> SR3Pipeline:
    torch.manual_seed(0)
    unet = UNet2DModel(
        sample_size=16,
        in_channels=6,
        out_channels=3,
        block_out_channels=(8, 16),
        layers_per_block=1,
        down_block_types=("DownBlock2D",) * 2,
        up_block_types=("UpBlock2D",) * 2,
        norm_num_groups=4,
    )
    sched = DDIMScheduler(prediction_type="sample", timestep_spacing="trailing")
    return SR3Pipeline(unet, sched, task=task, factors=[2, 4] if task == "upscale" else [],
                       tile_size=16, tile_overlap=4)  # fmt: skip


def gens(seeds: list[int]) -> list[torch.Generator]:
    return [torch.Generator().manual_seed(s) for s in seeds]


def test_round_trip_keeps_config(tmp_path: Path) -> None:
    tiny_pipe("upscale").save_pretrained(tmp_path, safe_serialization=True)
    assert (tmp_path / "unet" / "diffusion_pytorch_model.safetensors").exists()
    pipe = SR3Pipeline.from_pretrained(tmp_path, use_safetensors=True)
    assert pipe.config.task == "upscale" and list(pipe.config.factors) == [2, 4]
    assert pipe.supports("upscale", 4) and not pipe.supports("upscale", 3)
    assert not pipe.supports("denoise")


@pytest.mark.parametrize("h,w", [(37, 29), (16, 16), (50, 7)])
def test_any_size_in_range(h: int, w: int) -> None:
    cond = torch.rand(2, 3, h, w) * 2 - 1
    out = tiny_pipe()(cond, gens([0, 1]), num_inference_steps=2)
    assert out.shape == cond.shape
    assert out.min() >= -1 and out.max() <= 1


def test_batch_size_never_changes_an_image() -> None:
    pipe = tiny_pipe("denoise")
    cond = torch.rand(3, 3, 37, 29) * 2 - 1
    batch = pipe(cond, gens([5, 6, 7]), num_inference_steps=3)
    for i, s in enumerate([5, 6, 7]):
        single = pipe(cond[i : i + 1], gens([s]), num_inference_steps=3)
        assert torch.equal(single[0], batch[i])
    # and the seed does matter (the noise is used)
    other = pipe(cond[:1], gens([99]), num_inference_steps=3)
    assert not torch.equal(other[0], batch[0])


def test_rejects_wrong_generator_count() -> None:
    with pytest.raises(ValueError, match="one generator per image"):
        tiny_pipe()(torch.zeros(2, 3, 16, 16), gens([0]), num_inference_steps=1)


def test_unknown_task_rejected() -> None:
    with pytest.raises(ValueError):
        tiny_pipe("inpaint")


def tiny_s2d_denoiser() -> SR3Pipeline:
    """A denoiser with the bundled models' layout: space-to-depth 2 and a noise-map channel."""
    torch.manual_seed(0)
    unet = UNet2DModel(
        sample_size=8,
        in_channels=6 * 4 + 1,
        out_channels=3 * 4,
        block_out_channels=(8, 16),
        layers_per_block=1,
        down_block_types=("DownBlock2D",) * 2,
        up_block_types=("UpBlock2D",) * 2,
        norm_num_groups=4,
    )
    sched = DDIMScheduler(prediction_type="sample", timestep_spacing="trailing")
    return SR3Pipeline(unet, sched, task="denoise", tile_size=16, tile_overlap=4,
                       default_steps=1, space_to_depth=2, noise_map=True)  # fmt: skip


def test_space_to_depth_and_noise_map_round_trip(tmp_path: Path) -> None:
    pipe = tiny_s2d_denoiser()
    assert pipe.multiple == 4  # one UNet halving × space-to-depth 2
    pipe.save_pretrained(tmp_path, safe_serialization=True)
    loaded = SR3Pipeline.from_pretrained(tmp_path, use_safetensors=True)
    assert loaded.config.space_to_depth == 2 and loaded.config.noise_map is True
    cond = torch.rand(1, 3, 37, 29) * 2 - 1
    a = pipe(cond, gens([0]), num_inference_steps=None, noise_level=25.0)
    b = loaded(cond, gens([0]), num_inference_steps=None, noise_level=25.0)
    assert a.shape == cond.shape and torch.equal(a, b)


def test_noise_level_reaches_the_network_and_none_estimates_it() -> None:
    pipe = tiny_s2d_denoiser()
    g = torch.Generator().manual_seed(0)
    clean = torch.rand(1, 3, 32, 32, generator=g) * 0.5 - 0.25
    noisy = (clean + torch.randn(clean.shape, generator=g) * (20 / 127.5)).clamp(-1, 1)
    low = pipe(noisy, gens([0]), noise_level=5.0)
    high = pipe(noisy, gens([0]), noise_level=50.0)
    assert not torch.equal(low, high)  # σ is an input, not ignored
    sigma = float(estimate_noise_sigma(noisy)[0])
    estimated = pipe(noisy, gens([0]))  # noise_level=None
    assert torch.equal(estimated, pipe(noisy, gens([0]), noise_level=sigma))
    with pytest.raises(ValueError, match="noise_level"):
        pipe(noisy, gens([0]), noise_level=0.0)


@pytest.mark.parametrize("sigma", [10.0, 25.0, 50.0])
def test_noise_estimate_is_close_on_a_smooth_image(sigma: float) -> None:
    g = torch.Generator().manual_seed(1)
    yy, xx = torch.meshgrid(torch.linspace(-0.5, 0.5, 128), torch.linspace(-0.5, 0.5, 128),
                            indexing="ij")  # fmt: skip
    clean = torch.stack([yy, xx, yy * xx]).unsqueeze(0)
    noisy = clean + torch.randn(clean.shape, generator=g) * (sigma / 127.5)
    est = float(estimate_noise_sigma(noisy)[0])
    assert abs(est - sigma) < 0.08 * sigma


def test_channel_mismatch_is_refused() -> None:
    unet = tiny_pipe().unet  # 6 → 3 channels
    sched = DDIMScheduler(prediction_type="sample")
    with pytest.raises(ValueError, match="space_to_depth=2"):
        SR3Pipeline(unet, sched, task="denoise", space_to_depth=2, noise_map=True)


def test_none_steps_use_the_default() -> None:
    pipe = tiny_s2d_denoiser()
    cond = torch.rand(1, 3, 16, 16) * 2 - 1
    assert torch.equal(
        pipe(cond, gens([3]), num_inference_steps=None, noise_level=10.0),
        pipe(cond, gens([3]), num_inference_steps=1, noise_level=10.0),
    )
    assert not torch.equal(
        pipe(cond, gens([3]), num_inference_steps=3, noise_level=10.0),
        pipe(cond, gens([3]), num_inference_steps=1, noise_level=10.0),
    )


def test_scale_x_t_makes_the_single_step_a_regression() -> None:
    # At t = T-1 x_t is pure noise; scaled by sqrt(alpha_bar) ~ 0.006 it barely reaches the net,
    # so the seed (the noise) hardly matters, unlike the unscaled model's.
    cond = torch.rand(1, 3, 16, 16) * 2 - 1
    plain = tiny_pipe("upscale")
    scaled = tiny_pipe("upscale")
    scaled.register_to_config(scale_x_t=True)
    d_plain = (plain(cond, gens([1]), 1) - plain(cond, gens([2]), 1)).abs().max()
    d_scaled = (scaled(cond, gens([1]), 1) - scaled(cond, gens([2]), 1)).abs().max()
    assert d_scaled < 0.05 * d_plain


def test_self_ensemble_averages_the_eight_views() -> None:
    pipe = tiny_pipe("upscale")
    cond = torch.rand(1, 3, 20, 12) * 2 - 1
    single = pipe(cond, gens([0]), 1)
    pipe.register_to_config(self_ensemble=8)
    ens = pipe(cond, gens([0]), 1)
    assert ens.shape == cond.shape and not torch.allclose(ens, single)
    assert torch.equal(ens, pipe(cond, gens([0]), 1))  # deterministic
