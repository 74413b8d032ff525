"""Fixtures of the models/ tests: tiny saved pipelines (builders in tests/dummy_models.py).

Session-scoped and built on first use, so a test file only pays for the models it loads."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def models_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("tiny-models")


@pytest.fixture(scope="session")
def ddpm_dir(models_root: Path) -> Path:
    from dummy_models import make_tiny_ddpm

    return make_tiny_ddpm(models_root / "ddpm")


@pytest.fixture(scope="session")
def ddim_dir(models_root: Path) -> Path:
    from dummy_models import make_tiny_ddpm

    return make_tiny_ddpm(models_root / "ddim", scheduler="ddim")


@pytest.fixture(scope="session")
def class_cond_dir(models_root: Path) -> Path:
    from dummy_models import make_tiny_ddpm

    return make_tiny_ddpm(models_root / "classes", num_class_embeds=3)


@pytest.fixture(scope="session")
def nan_dir(models_root: Path) -> Path:
    from dummy_models import make_nan_model

    return make_nan_model(models_root / "nan")


@pytest.fixture(scope="session")
def black_dir(models_root: Path) -> Path:
    from dummy_models import make_black_model

    return make_black_model(models_root / "black")


@pytest.fixture(scope="session")
def grey_dir(models_root: Path) -> Path:
    from dummy_models import make_tiny_ddpm

    return make_tiny_ddpm(models_root / "grey", scheduler="ddim", channels=1)


# --- text-conditioned latent pipelines and upscalers (built on first use: ~1 s each) -------------


@pytest.fixture(scope="session")
def sd_dir(models_root: Path) -> Path:
    from dummy_models import make_tiny_sd

    return make_tiny_sd(models_root / "sd")


@pytest.fixture(scope="session")
def sd_inpaint_dir(models_root: Path) -> Path:
    from dummy_models import make_tiny_sd

    return make_tiny_sd(models_root / "sd-inpaint", inpaint=True)


@pytest.fixture(scope="session")
def x4_dir(models_root: Path) -> Path:
    from dummy_models import make_tiny_sd_upscale_x4

    return make_tiny_sd_upscale_x4(models_root / "x4")


@pytest.fixture(scope="session")
def latent_x2_dir(models_root: Path) -> Path:
    from dummy_models import make_tiny_latent_upscale_x2

    return make_tiny_latent_upscale_x2(models_root / "latent-x2")


@pytest.fixture(scope="session")
def ldm_dir(models_root: Path) -> Path:
    from dummy_models import make_tiny_ldm_sr

    return make_tiny_ldm_sr(models_root / "ldm")


@pytest.fixture(scope="session")
def mask_file(models_root: Path) -> Path:
    """An 8x8 mask image: white (repaint) in the middle 4x4."""
    import numpy as np
    from PIL import Image

    p = models_root / "mask.png"
    m = np.zeros((8, 8), np.uint8)
    m[2:6, 2:6] = 255
    Image.fromarray(m).save(p)
    return p
