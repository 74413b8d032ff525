"""Row-level effect metrics (models/effects.py).

The estimators measure what they claim (noise σ, SSIM), every broken model of tests/broken_models.py
is caught by the check meant for it — and only the checks that should fire do — and the bundled
models on held-out photos (never used in their training) pass with the default thresholds.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from scipy import ndimage as ndi

from augflow.models import effects as E
from augflow.models.evaluate import BUNDLED, ProductModel, add_noise
from augflow.models.training.data import HELD_OUT, held_out_crops

SIZE = 96


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    # One thread: on a shared CPU, torch's thread team waits on its slowest member, which made
    # these model runs several times slower than single-threaded ones.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def crops() -> dict[str, np.ndarray]:
    """96×96 centres of the held-out evaluation crops (china, flower, aero): photos of sources no
    bundled model was trained on."""
    assert set(HELD_OUT) == {"china", "flower", "aero"}
    lo = (256 - SIZE) // 2
    return {
        name: np.ascontiguousarray(held_out_crops()[name][lo : lo + SIZE, lo : lo + SIZE])
        for name in HELD_OUT
    }


def _failing(operation: str, rows: list[dict], **params) -> set[str]:
    columns = {name: [r[name] for r in rows] for name in E.EFFECT_NAMES}
    return {c.name for c in E.effect_checks(operation, columns, **params) if not c.passed.all()}


# --- the estimators ------------------------------------------------------------------------------


def test_noise_estimate_recovers_white_noise(crops: dict[str, np.ndarray]) -> None:
    from skimage.restoration import estimate_sigma

    for i, img in enumerate(crops.values()):
        for sigma in (10, 25):
            noisy = add_noise(img, sigma, seed=i * 100 + sigma)
            est = E.noise_sigma(noisy)
            # texture reads as noise to any blind estimator; at most what the clean crop reads
            assert 0.9 * sigma < est < 1.05 * sigma + E.noise_sigma(img), (sigma, est)
            finest = np.mean([E.noise_sigma_plane(noisy[:, :, c])[0] for c in range(3)])
            reference = estimate_sigma(
                noisy.astype(np.float64), channel_axis=-1, average_sigmas=True
            )
            # the finest octave is the estimator scikit-image ships (db2 there, Haar here)
            assert abs(finest - reference) < 0.15 * reference


def test_two_octave_estimate_sees_correlated_noise(crops: dict[str, np.ndarray]) -> None:
    """Noise blurred by σ 0.7 px (what a weak denoiser leaves). On a flat image the finest octave
    reads about half its true level, the two-octave estimate 0.8–1.8× of it; on photos texture
    adds to both, and the two-octave estimate still never reads low."""
    rng = np.random.default_rng(0)
    noise = ndi.gaussian_filter(rng.normal(0.0, 25.0, (96, 96)), 0.7)
    finest, two = E.noise_sigma_plane(np.clip(128 + noise, 0, 255).round().astype(np.uint8))
    true = noise.std()
    assert finest < 0.6 * true
    assert 0.8 * true < two < 1.8 * true
    for img in crops.values():
        grey = img.astype(np.float64).mean(axis=2)
        noise = ndi.gaussian_filter(rng.normal(0.0, 25.0, grey.shape), 0.7)
        plane = np.clip(grey + noise, 0, 255).round().astype(np.uint8)
        finest, two = E.noise_sigma_plane(plane)
        assert two > 0.8 * noise.std()


def test_ssim_equals_scikit_image(crops: dict[str, np.ndarray]) -> None:
    from skimage.metrics import structural_similarity

    a, b = crops["flower"], add_noise(crops["flower"], 20, seed=1)
    ya = a.astype(np.float64) @ [0.299, 0.587, 0.114]
    yb = b.astype(np.float64) @ [0.299, 0.587, 0.114]
    expected = structural_similarity(ya, yb, data_range=255.0)
    assert E.ssim_luma(a, b) == pytest.approx(expected, abs=1e-5)
    assert E.ssim_luma(a, a) == pytest.approx(1.0)


def test_every_row_has_every_column(crops: dict[str, np.ndarray]) -> None:
    img = crops["aero"]
    small = np.asarray(Image.fromarray(img).resize((64, 64)))
    mask = np.zeros(img.shape[:2], np.uint8)
    mask[24:72, 24:72] = 255
    cases = {
        "generate": E.effect_metrics("generate", img),
        "denoise": E.effect_metrics("denoise", img, add_noise(img, 25, 0)),
        "upscale": E.effect_metrics("upscale", img, small),
        "img2img": E.effect_metrics("img2img", img, img),
        "inpaint": E.effect_metrics("inpaint", img, img, mask=mask),
    }
    for op, row in cases.items():
        assert tuple(row) == E.EFFECT_NAMES
        filled = {k for k, v in row.items() if v is not None}
        meant = {c.name for c in E.EFFECT_COLUMNS if op in c.operations}
        assert filled == meant, op
    with pytest.raises(ValueError, match="source"):
        E.effect_metrics("denoise", img)
    with pytest.raises(ValueError, match="mask"):
        E.effect_metrics("inpaint", img, img)


# --- denoise -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def noisy_set(crops: dict[str, np.ndarray]) -> list[tuple[int, np.ndarray]]:
    return [
        (sigma, add_noise(img, sigma, seed=7 * sigma + i))
        for i, img in enumerate(crops.values())
        for sigma in (15, 25, 50)
    ]


def _denoise_rows(model_dir, noisy_set, sigma: int, given: bool = True) -> list[dict]:
    """Denoise through AugmentModel (what ``augflow run``'s actors call); ``given``: the request
    sets noise_level, else each image's σ is estimated."""
    op = {"kind": "denoise", "noise_level": float(sigma)} if given else {"kind": "denoise"}
    noisy = [n for s, n in noisy_set if s == sigma]
    outs = ProductModel(model_dir, op)(noisy)
    return [E.effect_metrics("denoise", o, n) for o, n in zip(outs, noisy, strict=True)]


@pytest.mark.parametrize("sigma", [15, 25, 50])
def test_bundled_denoiser_passes(noisy_set, sigma: int) -> None:
    rows = _denoise_rows(BUNDLED / "sr3-denoise", noisy_set, sigma)
    assert _failing("denoise", rows, noise_level=sigma) == set()
    assert all(r["noise_removed"] > 0.5 * sigma for r in rows)
    estimated = _denoise_rows(BUNDLED / "sr3-denoise", noisy_set, sigma, given=False)
    assert _failing("denoise", estimated) == set()


def test_noop_denoiser_fails_only_the_noise_check(tmp_path, noisy_set) -> None:
    from broken_models import make_noop_denoiser

    path = make_noop_denoiser(tmp_path / "noop")
    for sigma in (15, 50):
        rows = _denoise_rows(path, noisy_set, sigma)
        assert all(r["noise_removed"] == 0.0 for r in rows)  # it returned its input
        assert _failing("denoise", rows, noise_level=sigma) == {"denoise_noise_removed"}


def test_blurring_denoiser_fails_the_detail_check(tmp_path, noisy_set) -> None:
    from broken_models import make_blur_sr3

    rows = _denoise_rows(make_blur_sr3(tmp_path / "blur"), noisy_set, 25)
    assert all(r["noise_out"] < 2.0 for r in rows)  # no noise left, all of it removed:
    assert all(r["noise_removed"] > 20.0 for r in rows)  # the noise check is fooled
    failing = _failing("denoise", rows, noise_level=25)
    assert "denoise_detail_kept" in failing
    assert "denoise_noise_removed" not in failing
    assert max(r["denoise_detail"] for r in rows) < 0.1


def test_color_cast_denoiser_fails_the_color_check(tmp_path, noisy_set) -> None:
    from broken_models import make_color_cast_sr3

    rows = _denoise_rows(make_color_cast_sr3(tmp_path / "cast"), noisy_set, 25)
    failing = _failing("denoise", rows, noise_level=25)
    assert "color_kept" in failing
    assert {"denoise_noise_removed", "denoise_detail_kept"}.isdisjoint(failing)


def test_denoise_detail_is_null_without_structure() -> None:
    rng = np.random.default_rng(0)
    flat = np.clip(128 + rng.normal(0, 25, (64, 64, 3)), 0, 255).round().astype(np.uint8)
    row = E.effect_metrics("denoise", np.full((64, 64, 3), 128, np.uint8), flat)
    assert row["denoise_detail"] is None
    assert _failing("denoise", [row], noise_level=25) == set()


# --- upscale -------------------------------------------------------------------------------------


def _upscale_rows(model_dir, crops, factor: int) -> list[dict]:
    """Upscale the crops' low-resolution versions through AugmentModel (None: plain bicubic)."""
    lows = [
        np.asarray(Image.fromarray(c).resize((SIZE // factor,) * 2, Image.BICUBIC))
        for c in crops.values()
    ]
    if model_dir is None:
        outs = [np.asarray(Image.fromarray(lo).resize((SIZE, SIZE), Image.BICUBIC)) for lo in lows]
    else:
        outs = ProductModel(model_dir, {"kind": "upscale", "factor": factor})(lows)
    return [E.effect_metrics("upscale", o, lo) for o, lo in zip(outs, lows, strict=True)]


@pytest.mark.parametrize("factor", [2, 4])
def test_bundled_upscaler_passes(crops, factor: int) -> None:
    rows = _upscale_rows(BUNDLED / "sr3-upscale", crops, factor)
    assert _failing("upscale", rows) == set()


def test_bicubic_enlargement_fails_the_detail_check(crops) -> None:
    rows = _upscale_rows(None, crops, 2)
    assert all(r["upscale_detail"] == pytest.approx(1.0) for r in rows)
    assert _failing("upscale", rows) == {"upscale_detail_added"}


def test_blurring_upscaler_fails_the_detail_check(tmp_path, crops) -> None:
    from broken_models import make_blur_sr3

    rows = _upscale_rows(make_blur_sr3(tmp_path / "blur-up", task="upscale"), crops, 2)
    assert "upscale_detail_added" in _failing("upscale", rows)
    assert max(r["upscale_detail"] for r in rows) < 0.5


def test_color_cast_upscaler_fails_the_color_check(tmp_path, crops) -> None:
    from broken_models import make_color_cast_sr3

    path = make_color_cast_sr3(tmp_path / "cast-up", base=BUNDLED / "sr3-upscale")
    failing = _failing("upscale", _upscale_rows(path, crops, 2))
    assert "color_kept" in failing
    assert "upscale_detail_added" not in failing


# --- img2img -------------------------------------------------------------------------------------


def _img2img_rows(model_dir, crops, strength: float, shift_sources: int = 0) -> list[dict]:
    """Variants through the runner (the production path); sources may be paired wrongly on
    purpose (``shift_sources``) to measure unrelated images."""
    from dummy_models import items_for, make_request

    from augflow.models.runner import AugmentModel

    op = {"kind": "img2img", "variants": 2, "strength": strength}
    req = make_request(model_dir, op, steps=50, image_size=32)
    sources = [Image.fromarray(img) for img in crops.values()]
    items = items_for(req, len(sources))
    outs = AugmentModel(req, "cpu")(items, [sources[int(it.source_id[4:])] for it in items])
    refs = [
        np.asarray(Image.fromarray(img).resize((32, 32), Image.BICUBIC)) for img in crops.values()
    ]
    rows = []
    for it, out in zip(items, outs, strict=True):
        k = (int(it.source_id[4:]) + shift_sources) % len(refs)
        img = np.asarray(Image.open(__import__("io").BytesIO(out.png)).convert("RGB"))
        rows.append(E.effect_metrics("img2img", img, refs[k]))
    return rows


@pytest.mark.parametrize("strength", [0.3, 0.5])
def test_bundled_generator_img2img_passes(crops, strength: float) -> None:
    rows = _img2img_rows(BUNDLED / "ddim-faces32", crops, strength)
    assert _failing("img2img", rows, strength=strength) == set()


def test_img2img_that_returns_its_input_fails_the_copy_check(tmp_path, crops) -> None:
    from broken_models import make_identity_img2img

    rows = _img2img_rows(make_identity_img2img(tmp_path / "identity"), crops, 0.5)
    assert min(r["source_psnr"] for r in rows) >= 45.0
    assert _failing("img2img", rows, strength=0.5) == {"img2img_not_a_copy"}


def test_unrelated_variants_fail_the_related_check(crops) -> None:
    rows = _img2img_rows(BUNDLED / "ddim-faces32", crops, 0.3, shift_sources=1)
    assert "img2img_related_to_source" in _failing("img2img", rows, strength=0.3)


def test_img2img_bounds_follow_strength() -> None:
    assert E.img2img_min_ssim(0.0) == pytest.approx(0.4)
    assert E.img2img_min_ssim(0.5) == pytest.approx(0.175)
    assert E.img2img_min_ssim(1.0) == pytest.approx(-0.05)  # unrelated images pass at strength 1
    assert E.img2img_max_color_shift(0.5) is None  # reported, not checked, by default
    colour = E.EffectThresholds(img2img_color_shift_base=20.0)
    assert E.img2img_max_color_shift(0.5, colour) == pytest.approx(40.0)


# --- inpaint -------------------------------------------------------------------------------------


def test_inpaint_metrics_tell_kept_from_changed(crops) -> None:
    from skimage.restoration import inpaint_biharmonic

    img = crops["china"]
    mask = np.zeros(img.shape[:2], dtype=bool)
    mask[30:66, 30:66] = True
    filled = inpaint_biharmonic(img / 255.0, mask, channel_axis=-1)
    good = (filled * 255).round().clip(0, 255).astype(np.uint8)
    m8 = mask.astype(np.uint8) * 255
    rows = [E.effect_metrics("inpaint", good, img, mask=m8)]
    assert rows[0]["unmasked_psnr"] == 100.0  # biharmonic inpainting keeps the rest exactly
    assert _failing("inpaint", rows) == set()
    untouched = [E.effect_metrics("inpaint", img, img, mask=m8)]
    assert _failing("inpaint", untouched) == {"inpaint_masked_changed"}
    repainted_all = np.clip(
        img.astype(int) + np.random.default_rng(0).normal(0, 40, img.shape), 0, 255
    )
    everywhere = [E.effect_metrics("inpaint", repainted_all.astype(np.uint8), img, mask=m8)]
    assert "inpaint_unmasked_kept" in _failing("inpaint", everywhere)


# --- the checks themselves -----------------------------------------------------------------------


def test_effect_checks_are_vectorised_and_strict_about_nulls() -> None:
    columns = {name: [None, None, None] for name in E.EFFECT_NAMES}
    columns.update(
        noise_in=[25.0, 25.0, None],
        noise_removed=[20.0, 5.0, 20.0],
        denoise_detail=[0.9, None, 0.9],
        lowpass_psnr=[30.0, 30.0, 30.0],
        color_shift=[1.0, 1.0, 1.0],
    )
    checks = {
        c.name: c.passed.tolist() for c in E.effect_checks("denoise", columns, noise_level=25)
    }
    assert checks["denoise_noise_removed"] == [True, False, False]  # null noise_in fails
    assert checks["denoise_detail_kept"] == [True, True, True]  # null detail: not measurable
    unset = {c.name: c.passed.tolist() for c in E.effect_checks("denoise", columns)}
    assert unset["denoise_noise_removed"] == [True, False, False]  # bound from noise_in alone
    del columns["lowpass_psnr"]
    with pytest.raises(KeyError, match="lowpass_psnr"):
        E.effect_checks("denoise", columns, noise_level=25)
    stricter = E.EffectThresholds(denoise_min_removed_ratio=0.9)
    columns["lowpass_psnr"] = [30.0] * 3
    checks = {
        c.name: c.passed.tolist()
        for c in E.effect_checks("denoise", columns, noise_level=25, thresholds=stricter)
    }
    assert checks["denoise_noise_removed"] == [False, False, False]


def test_effect_checks_read_pandas_and_arrow_columns() -> None:
    import pandas as pd
    import pyarrow as pa

    rows = {name: [None, None] for name in E.EFFECT_NAMES}
    rows.update(source_psnr=[25.0, 60.0], source_ssim=[0.5, 0.9], color_shift=[3.0, None])
    table = pa.table({k: pa.array(v, pa.float32()) for k, v in rows.items()})
    colour = E.EffectThresholds(img2img_color_shift_base=20.0)
    expected = [
        c.passed.tolist() for c in E.effect_checks("img2img", rows, strength=0.3, thresholds=colour)
    ]
    assert expected == [[True, False], [True, True], [True, False]]
    for columns in (pd.DataFrame(rows), {n: table.column(n) for n in table.column_names}):
        got = E.effect_checks("img2img", columns, strength=0.3, thresholds=colour)
        assert [c.passed.tolist() for c in got] == expected
