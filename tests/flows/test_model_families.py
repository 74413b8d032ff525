"""Text-to-image and the x4 upscaler through the whole flow (real Prefect server, real Ray)."""

from __future__ import annotations

import os
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch
from dummy_models import make_tiny_sd, make_tiny_sd_upscale_x4
from PIL import Image

from augflow.schemas import parse_request
from augflow.tasks.register import get_version
from augflow.tasks.storage import Storage

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("prefect_server", "ray_local")]
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def _rows(root: Path, name: str) -> list[dict]:
    storage = Storage(str(root))
    entry = get_version(storage, name, "latest")
    assert entry.quality.passed
    return [r for f in entry.files for r in pq.read_table(storage.path(f.key)).to_pylist()]


def _t2i(model: Path, root: Path, device: str = "cpu") -> object:
    return parse_request(
        {
            "dataset": "tiny-t2i",
            "operation": {
                "kind": "generate",
                "num_images": 3,
                "class_names": ["cat", "dog"],
                "prompt_template": "a photo of a {label}",
                "negative_prompt": "blurry",
            },
            "model": {"id": str(model), "scheduler": "euler"},
            "output": str(root),
            "steps": 2,
            "guidance_scale": 2.0,
            "shard_size": 2,
            "compute": {"micro_batch": 2},
            "execution": {"device": device},
        }
    )


def test_text_to_image_through_the_flow(tmp_path: Path) -> None:
    from augflow.flows.augment import augment

    model = make_tiny_sd(tmp_path / "sd")
    outcome = augment(_t2i(model, tmp_path / "out"))
    assert outcome.status == "registered" and outcome.num_rows == 3
    rows = sorted(_rows(tmp_path / "out", "tiny-t2i"), key=lambda r: r["source_id"])
    assert [(r["class_label"], r["prompt"]) for r in rows] == [
        (0, "a photo of a cat"),
        (1, "a photo of a dog"),
        (0, "a photo of a cat"),
    ]
    for r in rows:
        assert r["model_id"] == str(model) and r["model_revision"].startswith("sha256:")
        assert r["scheduler"] == "euler" and r["operation"] == "generate"
        assert (r["width"], r["height"]) == (16, 16)


def test_x4_upscaler_through_the_flow(tmp_path: Path, photos_dir: Path) -> None:
    from augflow.flows.augment import augment

    model = make_tiny_sd_upscale_x4(tmp_path / "x4")
    request = parse_request(
        {
            "dataset": "tiny-x4",
            "operation": {"kind": "upscale", "factor": 4, "strength": 0.2},
            "inputs": str(photos_dir),
            "model": {"id": str(model)},
            "output": str(tmp_path / "out"),
            "steps": 1,
            "shard_size": 3,
            # photos_dir holds one corrupt file; a random tiny upscaler fails the effect checks
            # (issue 11, tested in tests/flows/test_quality_gate.py), which are not tested here
            "quality": {"max_quarantine_fraction": 0.5, "effect_checks": False},
        }
    )
    outcome = augment(request)
    assert outcome.status == "registered" and outcome.num_rows == 5
    for r in _rows(tmp_path / "out", "tiny-x4"):
        src = Image.open(photos_dir / r["source_id"])
        assert (r["width"], r["height"]) == (src.width * 4, src.height * 4)
        assert r["source_uri"] and r["operation"] == "upscale"


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_text_to_image_fp16_on_cuda(tmp_path: Path) -> None:
    from augflow.flows.augment import augment
    from augflow.models.runner import AugmentModel

    model = make_tiny_sd(tmp_path / "sd")
    request = _t2i(model, tmp_path / "out", device="cuda")
    loaded = AugmentModel(request, "cuda")
    assert loaded.dtype == torch.float16 and loaded.micro_batch == 2
    assert loaded.speed_settings.get("channels_last") is True  # the CUDA default
    outcome = augment(request)
    assert outcome.status == "registered" and outcome.num_rows == 3
    assert all((r["width"], r["height"]) == (16, 16) for r in _rows(tmp_path / "out", "tiny-t2i"))
