"""The quality gate's calibration script (models/quality_calibration.py): its image breakers, its
summaries and failing-check lists on real effect metrics, the noise-estimator calibration on two
small crops, and the Markdown it prints from a result. The full calibration (bundled models on
256² crops) is a documented script run, not a test."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from augflow.models import effects as E
from augflow.models import quality_calibration as Q
from augflow.models.evaluate import add_noise
from augflow.models.training.data import load_photo
from augflow.models.training.features import FEATURE_TRAIN


@pytest.fixture(scope="module")
def crop() -> np.ndarray:
    return np.ascontiguousarray(load_photo("astronaut")[:96, :96])


def _detail(img: np.ndarray) -> float:
    return float(np.abs(np.diff(img.astype(float), axis=1)).mean())


def _stripes() -> np.ndarray:
    """64² vertical stripes 2 px wide, orange on blue: all detail, nothing a blur keeps."""
    img = np.empty((64, 64, 3), np.uint8)
    img[:] = (30, 60, 200)
    img[:, (np.arange(64) // 2) % 2 == 1] = (240, 140, 20)
    return img


# --- the image breakers --------------------------------------------------------------------------


def test_gaussian_blurs_within_each_channel_and_keeps_the_type(crop: np.ndarray) -> None:
    out = Q.gaussian(crop, 1.5)
    assert out.shape == crop.shape and out.dtype == np.uint8
    assert _detail(out) < _detail(crop) and _detail(Q.gaussian(crop, 3.0)) < _detail(out)
    stripes = _stripes()
    assert _detail(Q.gaussian(stripes, 1.5)) < 0.1 * _detail(stripes)
    # channels are not mixed: a pure red image stays pure red
    red = np.zeros((16, 16, 3), np.uint8)
    red[..., 0] = 200
    assert np.array_equal(Q.gaussian(red, 2.0), red)


def test_mush_keeps_the_size_and_the_colours_but_not_the_detail(crop: np.ndarray) -> None:
    out = Q.mush(crop)
    assert out.shape == crop.shape and out.dtype == np.uint8
    assert _detail(out) < _detail(crop)
    stripes = _stripes()
    flat = Q.mush(stripes)
    assert _detail(flat) < 0.05 * _detail(stripes)
    # the 8× box average of the stripes is their mean colour, everywhere
    assert np.abs(flat.astype(float) - stripes.astype(float).mean((0, 1))).max() <= 1


def test_cast_shifts_each_channel_and_clips() -> None:
    img = np.array([[[10, 128, 250]]], np.uint8)
    assert Q.cast(img).tolist() == [[[42, 128, 218]]]
    assert Q.cast(img, (-20, 200, 10)).tolist() == [[[0, 255, 255]]]
    assert Q.cast(img).dtype == np.uint8


def test_to_rgb_and_resize() -> None:
    grey = np.arange(12, dtype=np.uint8).reshape(3, 4, 1)
    rgb = Q.to_rgb(grey)
    assert rgb.shape == (3, 4, 3) and np.array_equal(rgb[..., 2], grey[..., 0])
    colour = np.zeros((3, 4, 3), np.uint8)
    assert Q.to_rgb(colour) is colour
    assert Q.resize(colour, (8, 6), Image.Resampling.BICUBIC).shape == (6, 8, 3)


# --- summaries and failing checks ----------------------------------------------------------------


def test_summarise_is_min_max_per_metric_skipping_missing_values() -> None:
    rows = [{"a": 1.23456, "b": None}, {"a": -2.0, "b": 5}, {"c": 1.0}]
    assert Q.summarise(rows, ("a", "b", "d")) == {"a": [-2.0, 1.235], "b": [5.0, 5.0]}
    assert Q.summarise([], ("a",)) == {}


def test_failing_names_the_checks_a_broken_denoiser_fails(crop: np.ndarray) -> None:
    noisy = add_noise(crop, 25, seed=1)

    def fails(out: np.ndarray) -> list[str]:
        return Q.failing("denoise", [E.effect_metrics("denoise", out, noisy)], noise_level=25)

    assert fails(crop) == []  # the clean original: what a perfect denoiser returns
    assert fails(noisy) == ["denoise_noise_removed (1/1)"]  # a no-op
    assert "denoise_detail_kept (1/1)" in fails(Q.mush(noisy))
    assert "color_kept (1/1)" in fails(Q.cast(crop))
    # counts are per row: one good and one broken output
    rows = [E.effect_metrics("denoise", o, noisy) for o in (crop, noisy)]
    assert Q.failing("denoise", rows, noise_level=25) == ["denoise_noise_removed (1/2)"]


def test_noise_estimators_read_added_white_noise_close_to_its_sigma(crop: np.ndarray) -> None:
    images = {"a": crop, "b": np.ascontiguousarray(load_photo("coffee")[100:196, 200:296])}
    res = Q.calibrate_noise_estimator(images)
    assert set(res["estimate_over_true"]) == {"blur 0.0", "blur 0.5", "blur 0.7", "blur 1.0"}
    for lo, hi in res["estimate_over_true"]["blur 0.0"].values():
        assert 0.7 < lo <= hi < 1.3
    # blurred (correlated) noise fools the finest-scale estimator more than the two-octave one
    finest = res["estimate_over_true"]["blur 1.0"]["finest"]
    two = res["estimate_over_true"]["blur 1.0"]["two-octave"]
    assert finest[1] < two[1]
    assert set(res["clean_crops_read"]) == {"a", "b"}


def test_photo_tiles_are_non_overlapping_tiles_of_photos_the_features_never_saw() -> None:
    assert not set(Q.FEATURE_UNSEEN) & set(FEATURE_TRAIN)
    tiles = Q.photo_tiles(64)
    expected = sum(
        (load_photo(n).shape[0] // 64) * (load_photo(n).shape[1] // 64) for n in Q.FEATURE_UNSEEN
    )
    assert len(tiles) == expected
    assert all(t.shape[:2] == (64, 64) and t.flags.c_contiguous for t in tiles)
    first = load_photo(Q.FEATURE_UNSEEN[0])
    assert np.array_equal(tiles[0], first[:64, :64]) and np.array_equal(
        tiles[1], first[:64, 64:128]
    )


# --- the Markdown report -------------------------------------------------------------------------


RESULT = {
    "noise": {
        "estimate_over_true": {
            "blur 0.0": {"scikit-image": [0.9, 1.0], "finest": [0.95, 1.01], "two-octave": [1, 1]}
        },
        "clean_crops_read": {"china": [0.5, 0.7]},
    },
    "denoise": {
        "25": {
            "bundled SR3, σ given": {"noise_in": [24.0, 26.5], "color_shift": [0.1, 0.2]},
            "broken: no-op": {"noise_in": [24.0, 26.5], "noise_out": [24.0, 26.5]},
            "_failing": {"broken: no-op": ["denoise_noise_removed (5/5)"]},
        }
    },
    "img2img": {
        "0.5": {
            "bundled ddim-faces32": {"source_psnr": [14.0, 20.0]},
            "variants: highest PSNR between two variants of a source": 31.5,
            "_failing": {},
        }
    },
    "sets": {
        "phash_nearest_neighbour_min_p5_median": {"LFW faces (distinct people)": [12, 18, 26]},
        "extractor": {"name": "bundled:tiny", "digest": "sha256:abc"},
        "kid_bundled_features": {
            "faces vs faces": {"kid": 0.001, "kid_std": 0.002, "diversity_ratio": 1.0, "n": [5, 5]}
        },
    },
    "timing": {"denoise": {"median_ms": 3.5, "min_ms": 3.1, "max_ms": 9.0}},
}


def test_markdown_renders_every_section_of_a_result() -> None:
    md = Q.markdown(RESULT)
    lines = md.splitlines()
    assert "| white, blur 0.0 | 0.9 – 1.0 | 0.95 – 1.01 | 1 – 1 |" in lines
    assert "Clean crops read (finest / two-octave): {'china': [0.5, 0.7]}" in lines
    header = "| output | noise_in | noise_out | denoise_detail | lowpass_psnr | color_shift |"
    assert "#### Denoise, σ 25" in lines and header + " failing checks |" in lines
    # a metric a case lacks is an empty cell; no failing check is a dash; "_failing" is no row
    assert "| bundled SR3, σ given | 24 – 26.5 |  |  |  | 0.1 – 0.2 | — |" in lines
    assert (
        "| broken: no-op | 24 – 26.5 | 24 – 26.5 |  |  |  | denoise_noise_removed (5/5) |" in lines
    )
    assert not any(line.startswith("| _failing") for line in lines)
    assert "#### img2img, strength 0.5" in lines
    assert "Variants: highest PSNR between two variants of a source: 31.5 dB" in lines
    assert not any("variants: highest" in line for line in lines if line.startswith("|"))
    assert "- LFW faces (distinct people): 12 / 18 / 26" in lines
    assert "#### KID (bundled:tiny, sha256:abc)" in lines
    assert "| faces vs faces | 0.001 | 0.002 | 1.0 | [5, 5] |" in lines
    assert "- denoise: 3.5 (3.1 – 9.0)" in lines
    # sections without results are left out
    assert "Upscale" not in md and "Inpaint" not in md
    assert md.endswith("\n")


def test_markdown_of_an_empty_result_is_empty() -> None:
    assert Q.markdown({}) == "\n"
