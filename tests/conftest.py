"""Shared fixtures: real local services (Prefect server, Ray) and tiny models saved like real ones."""

from __future__ import annotations

import io
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest_plugins = ["s3_fixtures"]


def _sandbox_home() -> None:
    """Give the test session (and every process it starts) a private HOME.

    Ray's usage-stats module, which Ray loads even with the dashboard off, probes cloud metadata
    endpoints (169.254.169.254, metadata.google.internal) unless ``~/ray_bootstrap_config.yaml``
    names a provider. Tests must only talk to 127.0.0.1, so HOME points at a folder that has one.
    """
    import tempfile

    home = Path(tempfile.mkdtemp(prefix="augflow-test-home-"))
    (home / "ray_bootstrap_config.yaml").write_text("provider:\n  type: local\n")
    os.environ["HOME"] = str(home)


_sandbox_home()
os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
# Prefect reads this when it is first imported; its 20 s default is too short for a server that
# starts on a loaded 2-core CI machine (in-process flows in a test that has no `prefect_server`).
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")


@pytest.fixture(autouse=True)
def _environment_restored() -> Iterator[None]:
    """Undo what a test (or code it calls in-process, e.g. a benchmark's ``main``) wrote to
    ``os.environ``, so it cannot leak into the subprocesses later tests start."""
    saved = dict(os.environ)
    yield
    if dict(os.environ) != saved:
        os.environ.clear()
        os.environ.update(saved)


@pytest.fixture(scope="session")
def prefect_server() -> Iterator[str]:
    """A real Prefect server on 127.0.0.1 for the whole session; yields its API URL."""
    from prefect.settings import PREFECT_API_URL
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield PREFECT_API_URL.value()


@pytest.fixture(scope="session")
def ray_local() -> Iterator[None]:
    """A real local Ray, bound to loopback, shared by the session."""
    import ray

    from augflow.tasks.ray_pool import ensure_ray

    ensure_ray()
    yield
    ray.shutdown()


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from dummy_models import make_tiny_ddpm

    return make_tiny_ddpm(tmp_path_factory.mktemp("models") / "tiny-ddim", scheduler="ddim")


@pytest.fixture(scope="session")
def nan_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from dummy_models import make_nan_model

    return make_nan_model(tmp_path_factory.mktemp("models") / "nan")


def photo_crops(n: int, size: int = 24) -> list[Image.Image]:
    """Small crops of real photos shipped with scikit-image."""
    from skimage import data

    sources = [data.astronaut(), data.chelsea(), data.coffee(), data.rocket()]
    out = []
    for i in range(n):
        img = sources[i % len(sources)]
        y, x = 40 + 13 * i, 60 + 17 * i
        out.append(Image.fromarray(np.ascontiguousarray(img[y : y + size, x : x + size])))
    return out


@pytest.fixture
def photos_dir(tmp_path: Path) -> Path:
    """A folder of 5 real photo crops (PNG and JPEG), one corrupt file and one dotfile."""
    d = tmp_path / "photos"
    (d / "sub").mkdir(parents=True)
    for i, img in enumerate(photo_crops(5)):
        fmt, ext = ("JPEG", "jpg") if i % 2 else ("PNG", "png")
        buf = io.BytesIO()
        img.save(buf, format=fmt)
        target = d / "sub" if i == 4 else d
        (target / f"photo-{i}.{ext}").write_bytes(buf.getvalue())
    (d / "broken.png").write_bytes(b"this is not an image")
    (d / ".notes.txt").write_text("skipped by rule: a dotfile (every other file is an input)")
    return d
