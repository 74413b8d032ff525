"""Fixtures of the models/ tests: tiny saved pipelines (builders in tests/dummy_models.py)."""

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
