"""The quality gate end to end: the flow, on a real Prefect server and Ray, refuses to register
what a broken model made, naming the failing check, and registers the demo.

Each broken model (tests/broken_models.py) is a tiny model built from a config and saved like a
real one; inputs are a few small crops of photos no bundled model was trained on."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from PIL import Image

from augflow.models.evaluate import BUNDLED
from augflow.models.training.data import faces_32, load_photo

REPO = Path(__file__).resolve().parents[2]
PROMPTS = ["portrait of ann", "photo of bob", "a picture of carl", "dora smiling"]


def _faces() -> list[np.ndarray]:
    return [np.repeat(f[..., None], 3, axis=2) if f.ndim == 2 else f for f in faces_32()]


def _crops(folder: Path, size: int, sigma: float = 0.0) -> str:
    """Four crops of held-out photos (optionally with seeded Gaussian noise) as PNG files."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for k, (name, top, left) in enumerate(
        [("china", 130, 120), ("china", 280, 420), ("flower", 150, 300), ("aero", 150, 180)]
    ):
        crop = load_photo(name)[top : top + size, left : left + size].astype(np.float64)
        noisy = np.clip(crop + rng.normal(0, sigma, crop.shape), 0, 255).round().astype(np.uint8)
        Image.fromarray(noisy).save(folder / f"crop{k}.png")
    return str(folder)


def _noop(tmp: Path) -> dict[str, Any]:
    from broken_models import make_noop_denoiser

    return {
        "model": {"id": str(make_noop_denoiser(tmp / "noop"))},
        "operation": {"kind": "denoise", "noise_level": 25},
        "inputs": _crops(tmp / "in", 64, 25.0),
    }


def _blur(tmp: Path) -> dict[str, Any]:
    from broken_models import make_blur_sr3

    return {
        "model": {"id": str(make_blur_sr3(tmp / "blur"))},
        "operation": {"kind": "denoise", "noise_level": 25},
        "inputs": _crops(tmp / "in", 64, 25.0),
    }


def _cast(tmp: Path) -> dict[str, Any]:
    from broken_models import make_color_cast_sr3

    return {
        "model": {"id": str(make_color_cast_sr3(tmp / "cast"))},
        "operation": {"kind": "denoise", "noise_level": 25},
        "inputs": _crops(tmp / "in", 64, 25.0),
    }


def _same(tmp: Path) -> dict[str, Any]:
    from broken_models import make_same_image_generator

    return {
        "model": {"id": str(make_same_image_generator(tmp / "same", _faces()[42]))},
        "operation": {"kind": "generate", "num_images": 6, "prompts": [""]},
        "image_size": 32,
    }


def _copying(tmp: Path) -> dict[str, Any]:
    from broken_models import make_copying_generator

    faces = _faces()
    ref = tmp / "reference"
    ref.mkdir()
    for k, f in enumerate(faces[:40]):
        Image.fromarray(f).save(ref / f"face{k:02d}.png")
    return {
        "model": {"id": str(make_copying_generator(tmp / "copy", faces[:4], PROMPTS))},
        "operation": {"kind": "generate", "num_images": 4, "prompts": PROMPTS},
        "image_size": 32,
        "quality": {"reference": str(ref)},
    }


def _identity(tmp: Path) -> dict[str, Any]:
    from broken_models import make_identity_img2img

    return {
        "model": {"id": str(make_identity_img2img(tmp / "identity"))},
        "operation": {"kind": "img2img", "strength": 0.5, "variants": 1},
        "inputs": _crops(tmp / "in", 32),
    }


BROKEN: dict[str, tuple[Callable[[Path], dict[str, Any]], str]] = {
    "noop-denoiser": (_noop, "denoise_noise_removed"),
    "blurring-denoiser": (_blur, "denoise_detail_kept"),
    "colour-cast-denoiser": (_cast, "color_kept"),
    "same-image-generator": (_same, "near_duplicates"),
    "copying-generator": (_copying, "memorisation"),
    "identity-img2img": (_identity, "img2img_not_a_copy"),
}


def _registered(root: Path) -> list[str]:
    """Names of the datasets registered under ``root``, read as `augflow datasets list` reads them."""
    from augflow.tasks.register import list_datasets
    from augflow.tasks.storage import Storage

    return [d.name for d in list_datasets(Storage(str(root)))]


def _body(request: dict[str, Any], tmp: Path) -> dict[str, Any]:
    return {
        "dataset": "gate-test",
        "seed": 0,
        "steps": 2,
        "shard_size": 4,
        **request,
        "output": str(tmp / "out"),
    }


@pytest.mark.slow
@pytest.mark.parametrize("broken", list(BROKEN))
def test_broken_model_is_refused_with_the_check_named(
    broken: str, tmp_path: Path, prefect_server: str, ray_local: None
) -> None:
    # in the test's process, on its Prefect server and Ray; the CLI's exit code 1 and summary for
    # a failed gate: tests/flows/test_cli.py::test_quality_failure_exits_nonzero_with_report
    from augflow.flows.augment import augment
    from augflow.schemas import QualityGateError, parse_request

    build, check = BROKEN[broken]
    with pytest.raises(QualityGateError) as refused:
        augment(parse_request(_body(build(tmp_path), tmp_path)))
    assert any(check in line for line in refused.value.failed), refused.value.failed
    assert _registered(tmp_path / "out") == []


@pytest.mark.slow
def test_the_demo_registers_with_the_default_thresholds(
    tmp_path: Path, prefect_server: str, ray_local: None
) -> None:
    from augflow.flows.augment import augment
    from augflow.schemas import parse_request

    subprocess.run(
        [sys.executable, str(REPO / "examples/prepare_inputs.py"), str(tmp_path / "inputs")],
        check=True,
        timeout=120,
    )
    demo = yaml.safe_load((REPO / "examples/demo-denoise.yaml").read_text())
    demo["inputs"] = str(tmp_path / "inputs/noisy")
    demo["model"]["id"] = str(BUNDLED / "sr3-denoise")
    demo.pop("steps", None)
    # the demo's request as written, apart from where it reads and writes (`make demo` runs it
    # through the CLI in .ci/run)
    outcome = augment(parse_request({**demo, "output": str(tmp_path / "out")}))
    assert outcome.status == "registered"
    assert _registered(tmp_path / "out") == ["demo-denoised-photos"]
