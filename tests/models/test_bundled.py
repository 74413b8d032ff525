"""The bundled offline models: load through augflow's loader (safetensors), fit the size budget and
do measurably useful work on held-out photos.

Fast CPU checks on small crops of held-out photos only (sources never used in training); no
training here. Thresholds are what the shipped weights achieve on these crops (see
docs/bundled-eval.md for the full evaluation), with a margin, not aspirations.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from augflow.models.evaluate import ProductModel, add_noise, chroma, nlm, psnr
from augflow.models.loading import load_pipeline
from augflow.models.sr3 import SR3Pipeline
from augflow.models.training.data import degrade_lr, faces_32, load_photo
from augflow.schemas.request import ModelSpec

BUNDLED = Path(__file__).resolve().parents[2] / "models" / "bundled"
NAMES = ("sr3-denoise", "sr3-upscale", "ddim-faces32")


def _load(name: str) -> object:
    return load_pipeline(ModelSpec(id=str(BUNDLED / name)), "cpu").pipeline


@pytest.fixture(scope="module")
def crops() -> dict[str, np.ndarray]:
    # 64×64 crops of held-out photos: a textured one (red and green temple) and a saturated one
    # (orange petals)
    return {
        "china-temple": load_photo("china")[150:214, 130:194],
        "flower": load_photo("flower")[150:214, 250:314],
    }


def test_bundled_size_budget() -> None:
    total = sum(f.stat().st_size for n in NAMES for f in (BUNDLED / n).rglob("*") if f.is_file())
    assert total <= 15 * 1024 * 1024, f"bundled models are {total / 2**20:.1f} MiB"


@pytest.mark.parametrize("name", NAMES)
def test_safetensors_only_in_fp16(name: str) -> None:
    from safetensors import safe_open

    weights = BUNDLED / name / "unet" / "diffusion_pytorch_model.safetensors"
    assert not list((BUNDLED / name).rglob("*.bin")) and not list((BUNDLED / name).rglob("*.pt"))
    with safe_open(str(weights), "pt") as f:
        dtypes = {f.get_slice(k).get_dtype() for k in f.keys()}  # noqa: SIM118 - not a dict
    assert dtypes == {"F16"}


def test_configs_say_what_they_were_trained_for() -> None:
    den, up = _load("sr3-denoise"), _load("sr3-upscale")
    assert isinstance(den, SR3Pipeline) and isinstance(up, SR3Pipeline)
    assert den.config.task == "denoise" and den.config.noise_map is True
    assert list(den.config.sigma_range) == [5.0, 60.0]
    assert up.supports("upscale", 2) and up.supports("upscale", 4)
    assert not den.supports("upscale", 2) and not up.supports("denoise")
    # the loader gives fp32 on CPU whatever the stored precision
    assert den.unet.dtype == torch.float32 and den.config.default_steps == 1


def test_generator_is_grey_and_samples_faces() -> None:
    from diffusers import DDIMPipeline

    pipe = _load("ddim-faces32")
    assert isinstance(pipe, DDIMPipeline)
    assert pipe.unet.config.in_channels == 1  # grey faces: no channel to put a colour cast in
    n = 8
    gens = [torch.Generator().manual_seed(i) for i in range(n)]
    imgs = pipe(batch_size=n, generator=gens, num_inference_steps=20, output_type="np").images
    assert imgs.shape == (n, 32, 32, 1)
    assert imgs.std(axis=(1, 2, 3)).min() > 0.05  # not blank
    # Face-like: correlated with the mean training face (training faces themselves: 0.55).
    mean_face = faces_32().astype(np.float64).mean(axis=0).ravel()
    corr = [np.corrcoef(img[..., 0].ravel(), mean_face)[0, 1] for img in imgs]
    assert np.mean(corr) > 0.25, corr
    assert sum(c > 0.2 for c in corr) >= n // 2, corr


@pytest.mark.parametrize("sigma", [15, 50])
def test_denoiser_through_augflow_run(crops: dict[str, np.ndarray], sigma: int) -> None:
    """Through AugmentModel (what ``augflow run`` calls): much better than the noisy input
    everywhere, better than NL-means on texture (where the full evaluation shows its margin; on
    smooth saturated areas at σ 15 it is not, see docs/bundled-eval.md), and no loss of colour."""
    model = ProductModel(BUNDLED / "sr3-denoise", {"kind": "denoise", "noise_level": sigma})
    names = list(crops)
    noisy = [add_noise(crops[n], sigma, seed=i) for i, n in enumerate(names)]
    outs = model(noisy)
    for name, y, out in zip(names, noisy, outs, strict=True):
        clean = crops[name]
        ours = psnr(clean, out)
        assert ours > psnr(clean, y) + 1.0, name
        _dist, change = chroma(clean, out)
        # measured at worst: -2.45 (σ 50, orange petals: a slight desaturation)
        assert abs(change) < 3.0, f"{name}: chroma changed by {change:.2f}"
    temple = crops["china-temple"]
    base = psnr(temple, nlm(noisy[0]))
    assert psnr(temple, outs[0]) > base, f"{psnr(temple, outs[0]):.2f} vs NL-means {base:.2f}"


def test_denoiser_uses_the_given_sigma(crops: dict[str, np.ndarray]) -> None:
    pipe = _load("sr3-denoise")
    clean = crops["china-temple"]
    noisy = add_noise(clean, 15, seed=0)
    x = torch.from_numpy(noisy.astype(np.float32) / 127.5 - 1.0).permute(2, 0, 1)[None]

    def run(level: float) -> np.ndarray:
        out = pipe(x, [torch.Generator().manual_seed(0)], noise_level=level)
        return ((out[0].permute(1, 2, 0).numpy() + 1) * 127.5).round().clip(0, 255).astype(np.uint8)

    right, wrong = psnr(clean, run(15.0)), psnr(clean, run(50.0))
    assert right > wrong + 1.0  # told σ=50 for σ=15 noise it over-smooths


@pytest.mark.parametrize("factor", [2, 4])
def test_upscaler_beats_bicubic(crops: dict[str, np.ndarray], factor: int) -> None:
    """Sharper than the bicubic it starts from (about Lanczos level after its short training;
    the full evaluation is in docs/bundled-eval.md)."""
    model = ProductModel(BUNDLED / "sr3-upscale", {"kind": "upscale", "factor": factor})
    names = list(crops)
    pairs = [degrade_lr(crops[n], factor) for n in names]
    outs = model([lr for lr, _ in pairs])
    gains = [
        psnr(crops[n], out) - psnr(crops[n], bicubic)
        for n, (_, bicubic), out in zip(names, pairs, outs, strict=True)
    ]
    assert np.mean(gains) > 0.05, gains


@pytest.mark.parametrize("name", ["sr3-denoise", "sr3-upscale"])
def test_odd_sizes(name: str) -> None:
    pipe = _load(name)
    cond = torch.rand(2, 3, 37, 29) * 2 - 1
    out = pipe(cond, [torch.Generator().manual_seed(i) for i in range(2)], num_inference_steps=2)
    assert out.shape == (2, 3, 37, 29)
