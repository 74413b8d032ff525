"""The bundled-model evaluation: its metrics measure what they claim, and it runs the product path.

Tiny random models only (the real numbers are in docs/bundled-eval.md); each check is one that a
broken metric or a wrong code path would fail.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from dummy_models import make_tiny_sr3

from augflow.models.evaluate import (
    ProductModel,
    add_noise,
    chroma,
    frechet_distance,
    kernel_inception_distance,
    random_conv_features,
    request_for,
)
from augflow.models.training.data import (
    HELD_OUT,
    HELD_OUT_CROPS,
    PACKAGE_TRAIN,
    SKIMAGE_TRAIN,
    held_out_crops,
)


def _colourful(seed: int = 0, size: int = 32) -> np.ndarray:
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, size=(4, 4, 3)).astype(np.uint8)
    return np.kron(base, np.ones((size // 4, size // 4, 1), dtype=np.uint8))


def test_chroma_error_sees_desaturation_but_not_a_copy() -> None:
    img = _colourful()
    assert chroma(img, img) == (0.0, 0.0)
    grey = img.astype(np.float64).mean(axis=-1, keepdims=True)
    washed = (grey + 0.5 * (img - grey)).round().astype(np.uint8)
    dist, change = chroma(img, washed)
    assert dist > 5.0 and change < -5.0  # desaturated: far in a*b*, chroma went down


def test_add_noise_is_seeded_clipped_and_has_the_asked_sigma() -> None:
    img = np.full((128, 128, 3), 128, dtype=np.uint8)
    a, b = add_noise(img, 25, seed=3), add_noise(img, 25, seed=3)
    assert np.array_equal(a, b) and a.dtype == np.uint8
    assert abs(a.astype(np.float64).std() - 25) < 1.0
    assert not np.array_equal(a, add_noise(img, 25, seed=4))


def test_kid_and_fid_are_small_for_the_same_distribution_and_large_for_another() -> None:
    rng = np.random.default_rng(0)
    same_a = rng.normal(128, 30, size=(80, 32, 32)).clip(0, 255).astype(np.uint8)
    same_b = rng.normal(128, 30, size=(80, 32, 32)).clip(0, 255).astype(np.uint8)
    other = np.zeros((80, 32, 32), dtype=np.uint8)
    other[:, 8:24, 8:24] = 200  # flat squares: nothing like noise
    fa, fb, fo = (random_conv_features(x) for x in (same_a, same_b, other))
    assert np.array_equal(fa, random_conv_features(same_a))  # a fixed feature space
    assert kernel_inception_distance(fa, fb) < 0.1 * kernel_inception_distance(fa, fo)
    assert frechet_distance(fa, fb) < 0.1 * frechet_distance(fa, fo)


def test_held_out_photos_are_disjoint_from_training_and_cropped_as_documented() -> None:
    assert not set(HELD_OUT) & (set(SKIMAGE_TRAIN) | set(PACKAGE_TRAIN))
    crops = held_out_crops()
    assert len(crops) == sum(len(v) for v in HELD_OUT_CROPS.values())
    assert all(c.shape == (256, 256, 3) and c.dtype == np.uint8 for c in crops.values())
    # the crops hold content, not a flat border
    assert min(float(c.std()) for c in crops.values()) > 10


def test_request_leaves_steps_to_the_model(tmp_path: Path) -> None:
    folder = make_tiny_sr3(tmp_path / "up", task="upscale")
    req = request_for(folder, {"kind": "upscale", "factor": 2})
    # unset (None) once the schema allows it; until then exactly the model's default_steps
    assert req.steps in (None, 4)
    assert "steps" not in req.model_fields_set or req.steps == 4


@pytest.mark.parametrize(
    ("task", "operation", "size", "expected"),
    [
        ("upscale", {"kind": "upscale", "factor": 2}, (20, 12), (40, 24)),
        ("denoise", {"kind": "denoise", "noise_level": 25}, (21, 13), (21, 13)),
    ],
)
def test_product_model_runs_augment_model(
    tmp_path: Path, task: str, operation: dict, size: tuple[int, int], expected: tuple[int, int]
) -> None:
    folder = make_tiny_sr3(tmp_path / task, task=task)
    model = ProductModel(folder, operation)
    assert model.model.family.name == "sr3"
    src = _colourful(size=32)[: size[1], : size[0]]
    out = model([src, src])
    assert [o.shape for o in out] == [(expected[1], expected[0], 3)] * 2
    assert np.array_equal(out[0], model([src])[0])  # seeded: the same photo, the same output
