"""The training/held-out photo sets (models/training/data.py): disjoint by name and by content,
and the degradation the upscaler is trained and evaluated on."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from PIL import Image

from augflow.models.training.data import (
    HELD_OUT,
    HELD_OUT_CROPS,
    PACKAGE_TRAIN,
    SKIMAGE_TRAIN,
    degrade_lr,
    faces_32,
    held_out_crops,
    load_photo,
    to_rgb_uint8,
    training_names,
)


def _thumb(img: np.ndarray) -> np.ndarray:
    grey = Image.fromarray(img).convert("L").resize((16, 16), Image.Resampling.BOX)
    return np.asarray(grey, dtype=np.float64)


def test_held_out_names_are_not_training_names() -> None:
    assert not set(HELD_OUT) & (set(SKIMAGE_TRAIN) | set(PACKAGE_TRAIN))
    assert set(HELD_OUT_CROPS) == set(HELD_OUT)


@pytest.mark.slow
def test_no_training_photo_is_a_held_out_photo_by_content() -> None:
    # A photo can ship in two packages under two names (PyWavelets' camera is scikit-image's),
    # so names alone do not prove the sets disjoint: compare what the pixels look like.
    held = {n: load_photo(n) for n in HELD_OUT}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # package photos that are not installed are skipped
        names = training_names()
    for name in names:
        train = load_photo(name)
        for h, img in held.items():
            if train.shape != img.shape:
                continue
            diff = np.abs(_thumb(train) - _thumb(img)).mean()
            assert diff > 2.0, f"training photo {name!r} looks like held-out {h!r}"


def test_held_out_crops_are_256_square_rgb_from_every_held_out_photo() -> None:
    crops = held_out_crops()
    assert len(crops) == sum(len(v) for v in HELD_OUT_CROPS.values())
    assert {k.split("-")[0] for k in crops} == set(HELD_OUT)
    for img in crops.values():
        assert img.shape == (256, 256, 3) and img.dtype == np.uint8
        assert img.std() > 10  # a crop with content, not a flat corner


def test_to_rgb_uint8_handles_grey_float_and_alpha() -> None:
    grey = np.linspace(0, 1, 12, dtype=np.float64).reshape(3, 4)
    out = to_rgb_uint8(grey)
    assert out.shape == (3, 4, 3) and out.dtype == np.uint8
    assert out[0, 0].tolist() == [0, 0, 0] and out[-1, -1].tolist() == [255, 255, 255]
    rgba = np.zeros((2, 2, 4), dtype=np.uint8)
    rgba[..., 3] = 255
    assert to_rgb_uint8(rgba).shape == (2, 2, 3)


@pytest.mark.parametrize("factor", [2, 4])
def test_degrade_lr_shrinks_by_the_factor_and_upsamples_back(factor: int) -> None:
    rng = np.random.default_rng(0)
    hr = rng.integers(0, 256, size=(64, 48, 3), dtype=np.uint8)
    lr, up = degrade_lr(hr, factor)
    assert lr.shape == (64 // factor, 48 // factor, 3)
    assert up.shape == hr.shape
    # detail is lost: the round trip is not the original for noise, but keeps its mean
    assert not np.array_equal(up, hr)
    assert abs(float(up.mean()) - float(hr.mean())) < 3


def test_faces_are_one_hundred_grey_32px_faces() -> None:
    faces = faces_32()
    assert faces.shape == (100, 32, 32) and faces.dtype == np.uint8
    assert 40 < faces.mean() < 200 and faces.std() > 20
