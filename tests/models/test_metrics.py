"""Per-row metrics on images with known answers."""

from __future__ import annotations

import math

import numpy as np
import pytest
from PIL import Image

from augflow.models.images import encode_png
from augflow.models.metrics import PSNR_CAP_DB, compute_metrics, mean_and_std, psnr
from augflow.models.png import encode_png_array
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


@pytest.mark.parametrize("faithfulness", ["same_size", "downscaled", "none"])
def test_the_encoders_pixels_give_the_metrics_of_the_decoded_png(faithfulness) -> None:
    rng = np.random.default_rng(4)
    out = rng.integers(0, 256, (12, 18, 3), dtype=np.uint8)
    ref = _img(rng.integers(0, 256, (6, 9, 3)) if faithfulness == "downscaled" else out // 2)
    png = encode_png_array(out)
    kw = dict(faithfulness=faithfulness, expected_size=(18, 12), has_nan=False, min_pixel_std=2.0)
    decoded = compute_metrics(png, reference=ref, **kw)
    assert compute_metrics(png, reference=ref, pixels=out, **kw) == decoded
    assert decoded["decodable"] and (decoded["width"], decoded["height"]) == (18, 12)
    # no PNG at all is still "not decodable", whatever pixels came with it
    assert compute_metrics(None, pixels=out, **kw)["decodable"] is False


def test_mean_and_std_match_float64() -> None:
    for seed, shape in enumerate([(1, 1, 3), (7, 5), (64, 48, 3), (3, 300, 4)]):
        pixels = np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)
        mean, std = mean_and_std(pixels)
        as_float = pixels.astype(np.float64)
        assert mean == pytest.approx(as_float.mean(), abs=1e-9)
        assert std == pytest.approx(as_float.std(), abs=1e-9)
    assert mean_and_std(np.full((4, 4, 3), 200, np.uint8)) == (200.0, 0.0)


def test_mean_and_std_over_several_blocks(monkeypatch) -> None:
    from augflow.models import metrics

    pixels = np.random.default_rng(9).integers(0, 256, (50, 41, 3), dtype=np.uint8)
    whole = mean_and_std(pixels)
    monkeypatch.setattr(metrics, "_SUM_BLOCK", 1000)  # 7 blocks, the last one short
    assert mean_and_std(pixels) == whole
    assert whole[1] == pytest.approx(pixels.astype(np.float64).std(), abs=1e-9)
