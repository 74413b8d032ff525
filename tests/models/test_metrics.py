"""Per-row metrics on images with known answers."""

from __future__ import annotations

import math

import numpy as np
import pytest
from PIL import Image

from augflow.models.images import encode_png
from augflow.models.metrics import PSNR_CAP_DB, compute_metrics, psnr
from augflow.schemas.rows import METRIC_FIELDS


def _img(arr: np.ndarray) -> Image.Image:
    return Image.fromarray(arr.astype(np.uint8))


def _metrics(img: Image.Image, **kw):
    defaults = dict(
        faithfulness="same_size",
        expected_size=img.size,
        has_nan=False,
        min_pixel_std=2.0,
        reference=img,
    )
    defaults.update(kw)
    return compute_metrics(encode_png(img), **defaults)


def test_keys_match_the_row_schema() -> None:
    img = _img(np.full((8, 8, 3), 100))
    assert list(_metrics(img)) == [f.name for f in METRIC_FIELDS]


def test_identical_images_psnr_is_capped() -> None:
    rng = np.random.default_rng(0)
    img = _img(rng.integers(0, 256, (16, 16, 3)))
    m = _metrics(img)
    assert m["faithfulness_psnr"] == PSNR_CAP_DB == 100.0
    assert m["decodable"] and (m["width"], m["height"]) == (16, 16)


def test_psnr_of_known_gaussian_noise() -> None:
    rng = np.random.default_rng(1)
    clean = np.full((256, 256, 3), 128.0)
    sigma = 10.0
    noisy = np.clip(np.round(clean + rng.normal(0, sigma, clean.shape)), 0, 255)
    # rounding to integers adds uniform noise of variance 1/12
    expected = 10 * math.log10(255**2 / (sigma**2 + 1 / 12))
    got = _metrics(_img(noisy), reference=_img(clean))["faithfulness_psnr"]
    assert got == pytest.approx(expected, abs=0.1)


def test_psnr_exact_value() -> None:
    a = np.zeros((4, 4, 3), np.uint8)
    b = np.full((4, 4, 3), 10, np.uint8)  # mse 100
    assert psnr(a, b) == pytest.approx(10 * math.log10(255**2 / 100))


def test_pixel_stats_and_blank() -> None:
    flat = _img(np.full((8, 8, 3), 77))
    m = _metrics(flat, faithfulness="none", reference=None)
    assert m["pixel_mean"] == pytest.approx(77.0)
    assert m["pixel_std"] == 0.0
    assert m["is_blank"] is True
    assert m["faithfulness_psnr"] is None
    half = np.zeros((8, 8, 3))
    half[:4] = 255
    m = _metrics(_img(half), faithfulness="none", reference=None)
    assert m["pixel_std"] == pytest.approx(127.5)
    assert m["is_blank"] is False


def test_upscale_is_compared_at_input_size() -> None:
    rng = np.random.default_rng(2)
    small = _img(rng.integers(0, 256, (5, 7, 3)))
    big = small.resize((14, 10), Image.Resampling.NEAREST)  # area-average back is exact
    m = _metrics(big, faithfulness="downscaled", reference=small, expected_size=(14, 10))
    assert m["faithfulness_psnr"] == PSNR_CAP_DB


def test_undecodable_png_is_a_row_not_a_crash() -> None:
    m = compute_metrics(
        b"not a png",
        faithfulness="same_size",
        expected_size=(4, 4),
        has_nan=True,
        min_pixel_std=2.0,
    )
    assert m["decodable"] is False
    assert (m["width"], m["height"], m["expected_width"]) == (0, 0, 4)
    assert m["has_nan"] is True
