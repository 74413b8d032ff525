"""Feature extractors (models/features.py): the bundled network, the local-CLIP loading path (with
a tiny random CLIP of the same interface, saved with save_pretrained) and the refusals. The
training script is tests/models/training/test_features.py."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from augflow.models import features as F
from augflow.models.training.data import load_photo
from augflow.schemas.errors import ModelLoadError


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    # One thread: on a shared CPU, torch's thread team waits on its slowest member, which made
    # these model runs several times slower than single-threaded ones.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _crops(n: int = 6, size: int = 80) -> list[np.ndarray]:
    img = load_photo("astronaut")
    return [img[40 * k : 40 * k + size, 60 : 60 + size] for k in range(n)]


def test_bundled_extractor_loads_and_is_deterministic() -> None:
    ext = F.load_feature_extractor("bundled")
    assert ext.name == "bundled:tiny"
    assert ext.digest.startswith("sha256:")
    assert ext.num_features == 960 and ext.input_size == 64
    x = F.prepare_images(_crops(), ext.input_size)
    assert x.dtype == torch.uint8 and tuple(x.shape) == (6, 3, 64, 64)
    a, b = ext(x), ext(x)
    assert a.shape == (6, 960) and a.dtype == torch.float32
    assert torch.equal(a, b)
    # one image alone gives the same features as inside a batch (GroupNorm: no batch statistics)
    assert torch.allclose(ext(x[2:3]), a[2:3], atol=1e-5)
    # other sizes are resized inside (bilinear): close to the PIL-prepared path, not identical
    raw = torch.from_numpy(np.stack(_crops())).permute(0, 3, 1, 2)
    assert torch.nn.functional.cosine_similarity(ext(raw), a).min() > 0.99


def test_bundled_weights_fit_the_budget() -> None:
    folder = F.bundled_folder()
    weights = folder / F.WEIGHTS_FILE
    assert weights.stat().st_size <= 4 * 1024 * 1024
    assert not list(folder.glob("*.bin")) and not list(folder.glob("*.pt"))
    config = json.loads((folder / "config.json").read_text())
    assert config[F.CONFIG_KEY]["dim"] == 128 and config["num_features"] == 960


def test_features_see_degradations() -> None:
    """The objective made the features see blur, noise and colour casts: each moves a crop's
    embedding (what the training heads read) more than twice as far as moving the crop by 2
    pixels does, and the shipped features (which add every stage's pooled statistics, more
    sensitive to framing) more than 1.5 times as far (measured: blur 1.7, noise 1.65, cast 2.9)."""
    from scipy import ndimage as ndi

    ext = F.load_feature_extractor()
    img = load_photo("astronaut")
    clean = [img[40 * k : 40 * k + 80, 60:140] for k in range(8)]
    shifted = [img[40 * k + 2 : 40 * k + 82, 62:142] for k in range(8)]

    def embedding(x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return ext.net.embed(ext.preprocess(x.float() / 255.0))

    def moved(images: list[np.ndarray], f=ext) -> float:
        base = f(F.prepare_images(clean, 64))
        return float((f(F.prepare_images(images, 64)) - base).norm(dim=1).mean())

    rng = np.random.default_rng(0)
    shift = np.array([40, 0, -40])
    degraded = {
        "blur": [ndi.gaussian_filter(c, (2.5, 2.5, 0)) for c in clean],
        "noise": [np.clip(c + rng.normal(0, 30, c.shape), 0, 255).astype(np.uint8) for c in clean],
        "cast": [np.clip(c.astype(int) + shift, 0, 255).astype(np.uint8) for c in clean],
    }
    framing, framing_emb = moved(shifted), moved(shifted, embedding)
    for name, images in degraded.items():
        assert moved(images, embedding) > 2 * framing_emb, name
        assert moved(images) > 1.5 * framing, name


def test_spec_selects_the_extractor(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="never downloaded"):
        F.load_feature_extractor(tmp_path / "missing")
    assert F.load_feature_extractor("bundled:tiny").name == "bundled:tiny"
    assert F.load_feature_extractor().name == "bundled:tiny"


def test_refusals(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="no bundled feature network 'nope'"):
        F.load_feature_extractor("bundled:nope")
    with pytest.raises(ModelLoadError, match="huggingface-cli download"):
        F.load_feature_extractor("openai/clip-vit-base-patch32")
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(ModelLoadError, match="'bert'"):
        F.load_feature_extractor(tmp_path)


def _tiny_clip_vision(folder: Path, full_model: bool) -> Path:
    """A CLIP with random weights and a few channels, saved like a downloaded one."""
    from transformers import (
        CLIPConfig,
        CLIPModel,
        CLIPTextConfig,
        CLIPVisionConfig,
        CLIPVisionModelWithProjection,
    )

    torch.manual_seed(0)
    vision = CLIPVisionConfig(
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=32,
        patch_size=8,
        projection_dim=24,
    )
    if full_model:
        text = CLIPTextConfig(
            hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2
        )
        config = CLIPConfig(
            text_config=text.to_dict(), vision_config=vision.to_dict(), projection_dim=24
        )
        model = CLIPModel(config)
    else:
        model = CLIPVisionModelWithProjection(vision)
    model.save_pretrained(folder, safe_serialization=True)
    return folder


@pytest.mark.parametrize("full_model", [False, True])
def test_local_clip_folder_loads_without_network(tmp_path: Path, full_model: bool) -> None:
    folder = _tiny_clip_vision(tmp_path / "clip", full_model)
    ext = F.load_feature_extractor(folder)
    assert isinstance(ext, F.ClipFeatures)
    assert ext.name == "clip:clip" and ext.num_features == 24 and ext.input_size == 32
    x = F.prepare_images(_crops(3), ext.input_size)
    f = ext(x)
    assert f.shape == (3, 24) and torch.isfinite(f).all()
    assert not torch.allclose(f[0], f[1])


def test_clip_folder_with_pickles_only_is_refused(tmp_path: Path) -> None:
    folder = _tiny_clip_vision(tmp_path / "clip", False)
    for p in folder.glob("*.safetensors"):
        p.unlink()
    (folder / "pytorch_model.bin").write_bytes(b"not loaded")
    with pytest.raises(ModelLoadError, match="no safetensors"):
        F.load_feature_extractor(folder)


def test_torchmetrics_accepts_the_extractor_as_its_feature_module() -> None:
    from torchmetrics.image.fid import FrechetInceptionDistance
    from torchmetrics.image.kid import KernelInceptionDistance

    ext = F.load_feature_extractor()
    x = F.prepare_images(_crops(8), 64)
    kid = KernelInceptionDistance(feature=ext, subsets=3, subset_size=4)
    fid = FrechetInceptionDistance(feature=ext)
    for metric in (kid, fid):
        metric.update(x[:4], real=True)
        metric.update(x[4:], real=False)
    assert torch.isfinite(kid.compute()[0])
    assert torch.isfinite(fid.compute())
