"""Row-level effect metrics: did the operation do what was asked, measured on one output row.

The form metrics (models/metrics.py) say an image decodes and is not blank. These say whether a
denoiser removed noise without smearing the picture, an upscaler added detail without changing the
picture, an img2img variant is neither a copy of its source nor unrelated to it, and an inpainter
kept what it was told to keep and changed what it was told to change. Each column is a float (null
where it does not apply or cannot be measured) with a default threshold in
:class:`EffectThresholds`; :func:`effect_checks` applies them to a batch of rows. Calibration
numbers and the reasoning behind every default are in docs/quality-gate.md.

Everything works on uint8 RGB arrays (or PIL images) at the stored output's resolution and costs a
few milliseconds at 256×256 (numpy + scipy; no model). Pure functions: no Prefect, Ray or I/O.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from functools import lru_cache
from typing import Any, Literal, get_args

import numpy as np
from PIL import Image
from scipy import ndimage as ndi

from augflow.models.metrics import PSNR_CAP_DB
from augflow.schemas.rows import EFFECT_FIELDS

EffectOperation = Literal["generate", "img2img", "denoise", "upscale", "inpaint"]
#: the operations effect metrics know (plugin operations get null effect columns)
EFFECT_OPERATIONS: tuple[str, ...] = get_args(EffectOperation)
ImageLike = np.ndarray | Image.Image

#: MAD / 0.6745 is the standard deviation of Gaussian noise (Donoho & Johnstone's estimator).
_MAD_TO_SIGMA = 1.0 / 0.6745
#: Rec. 601 luma, the weights PIL's "L" mode uses.
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)
#: Gaussian scales (px) of the band the denoise detail ratio measures: DoG(1, 2) holds edges and
#: texture, and at σ 50 still has a usable signal-to-noise ratio (the finest scale does not).
_DETAIL_BAND = (1.0, 2.0)
#: A band whose estimated signal energy is below this share of the noise energy in it holds no
#: measurable structure (−10 dB SNR): the detail ratio is not measurable there and is null.
_MIN_BAND_SNR = 0.1


@dataclass(frozen=True)
class EffectColumn:
    """One row-level effect column: its Arrow type, the operations that fill it, what it means."""

    name: str
    arrow_type: str
    operations: tuple[str, ...]
    description: str


#: Every effect column, in row order. Rows of other operations hold null in them.
EFFECT_COLUMNS: tuple[EffectColumn, ...] = (
    EffectColumn(
        "noise_in",
        "float32",
        ("denoise",),
        "noise σ of the input (0–255), finest-octave wavelet MAD (the classic estimator; the "
        "input's noise is white by the operation's contract), mean over channels",
    ),
    EffectColumn(
        "noise_removed",
        "float32",
        ("denoise",),
        "σ of what the model took out (input − output), same estimator: ≈ the input's noise "
        "for a denoiser, 0 for a model that returns its input",
    ),
    EffectColumn(
        "noise_out",
        "float32",
        ("denoise",),
        "noise σ read in the output, two-octave estimate (sees correlated leftover noise; "
        "texture reads as noise too, so it is reported, not checked)",
    ),
    EffectColumn(
        "denoise_detail",
        "float32",
        ("denoise",),
        "edge/texture energy kept: output's DoG(1,2) energy over the input's minus its noise "
        "(≈1 kept, →0 smeared); null when the input has no measurable structure",
    ),
    EffectColumn(
        "lowpass_psnr",
        "float32",
        ("denoise",),
        "dB; 4×4 block means of output vs input (the averaging divides white noise by 4)",
    ),
    EffectColumn(
        "consistency_psnr",
        "float32",
        ("upscale",),
        "dB; output resized back to the input size (PIL bicubic) vs the input",
    ),
    EffectColumn(
        "upscale_detail",
        "float32",
        ("upscale",),
        "output's gradient energy over a bicubic enlargement's (1 = as blurry as bicubic)",
    ),
    EffectColumn(
        "source_psnr",
        "float32",
        ("img2img",),
        "dB; variant vs its (fitted) source; 40+ dB is a copy",
    ),
    EffectColumn(
        "source_ssim",
        "float32",
        ("img2img",),
        "SSIM (luma, 7×7 window) of the variant vs its source; ≈0 means unrelated",
    ),
    EffectColumn(
        "unmasked_psnr",
        "float32",
        ("inpaint",),
        "dB; output vs input outside the mask (minus a margin at its edge)",
    ),
    EffectColumn(
        "masked_psnr",
        "float32",
        ("inpaint",),
        "dB; output vs input inside the mask (low = repainted)",
    ),
    EffectColumn(
        "color_shift",
        "float32",
        ("img2img", "denoise", "upscale", "inpaint"),
        "CIELAB ΔE76 between the mean colours of output and source (inpaint: outside the mask)",
    ),
)
EFFECT_NAMES: tuple[str, ...] = tuple(c.name for c in EFFECT_COLUMNS)
if tuple(f.name for f in EFFECT_FIELDS) != EFFECT_NAMES:  # the row schema is the stored format
    raise RuntimeError(f"EFFECT_COLUMNS {EFFECT_NAMES} drifted from schemas.rows.EFFECT_FIELDS")


@dataclass(frozen=True)
class EffectThresholds:
    """Default thresholds of the row-level effect checks (justified in docs/quality-gate.md)."""

    #: denoise: noise_removed ≥ ratio × min(noise_in, noise_level) (noise_in alone when the
    #: request leaves noise_level unset) ...
    denoise_min_removed_ratio: float = 0.3
    #: ... unless that expected noise is below this σ: nothing measurable to remove
    denoise_min_measurable_noise: float = 3.0
    denoise_min_detail: float = 0.2
    denoise_min_lowpass_psnr: float = 24.0
    upscale_min_consistency_psnr: float = 28.0
    #: > 1: a plain bicubic enlargement (1.0) or anything blurrier fails
    upscale_min_detail: float = 1.05
    #: img2img: a variant at or above this PSNR to its source is a copy
    img2img_max_source_psnr: float = 40.0
    #: img2img: source_ssim ≥ a bound falling linearly with strength, from this at strength 0 ...
    img2img_min_ssim_at_zero: float = 0.4
    #: ... to this at strength 1 (below 0: unrelated images, SSIM ≈ 0 ± 0.05, pass there)
    img2img_min_ssim_at_one: float = -0.05
    inpaint_min_unmasked_psnr: float = 20.0
    #: inpaint: unmasked_psnr − masked_psnr ≥ this many dB (the inside changed more than outside)
    inpaint_min_change_db: float = 3.0
    #: denoise, upscale and inpaint keep the colours they were given
    max_color_shift: float = 6.0
    #: img2img: ΔE ≤ base + slope × strength when base is set; unset (the default): reported,
    #: not checked — SDEdit re-draws colour as strength grows, and a one-channel model (the
    #: bundled face generator) makes grey variants of colour photos, by design
    img2img_color_shift_base: float | None = None
    img2img_color_shift_slope: float = 40.0

    @classmethod
    def names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in fields(cls))


# --- image helpers ---------------------------------------------------------------------------


def as_rgb_array(img: ImageLike) -> np.ndarray:
    """uint8 (H, W, 3) from a PIL image or an (H, W), (H, W, 1|3|4) uint8 array."""
    if isinstance(img, Image.Image):
        return np.asarray(img.convert("RGB"))
    arr = np.asarray(img)
    if arr.dtype != np.uint8:
        raise ValueError(f"images must be uint8 (0–255), got {arr.dtype}")
    if arr.ndim == 2:
        return np.repeat(arr[:, :, None], 3, axis=2)
    if arr.ndim == 3 and arr.shape[2] in (1, 3, 4):
        return arr[:, :, :3] if arr.shape[2] != 1 else np.repeat(arr, 3, axis=2)
    raise ValueError(f"images must be (H, W) or (H, W, 3) arrays, got shape {arr.shape}")


class _Img:
    """An image converted once: uint8 RGB, float32 RGB and float32 luma (Rec. 601)."""

    __slots__ = ("f", "luma", "rgb")

    def __init__(self, img: ImageLike) -> None:
        self.rgb = np.ascontiguousarray(as_rgb_array(img))
        self.f = self.rgb.astype(np.float32)
        self.luma = self.f @ _LUMA

    @property
    def size(self) -> tuple[int, int]:
        return self.rgb.shape[1], self.rgb.shape[0]

    def mean_rgb(self, where: np.ndarray | None = None) -> np.ndarray:
        flat = self.f.reshape(-1, 3)
        if where is None:
            return np.ones(flat.shape[0], np.float32) @ flat / flat.shape[0]
        return flat[where.ravel()].mean(axis=0)


def _resize(rgb: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """PIL bicubic resize to (width, height); PIL's filter widens when shrinking (antialiased)."""
    if (rgb.shape[1], rgb.shape[0]) == size:
        return rgb
    return np.asarray(Image.fromarray(rgb).resize(size, Image.Resampling.BICUBIC))


def psnr_db(a: np.ndarray, b: np.ndarray, where: np.ndarray | None = None) -> float | None:
    """PSNR (peak 255) of two same-shape arrays, over the pixels where ``where`` (H, W) is True.

    Capped at ``PSNR_CAP_DB`` like the form metrics; None when ``where`` selects no pixel.
    """
    diff = a.astype(np.float32) - b.astype(np.float32)
    sq = diff * diff
    if where is not None:
        if not where.any():
            return None
        sq = sq[where]
    mse = float(sq.mean(dtype=np.float64))
    if mse <= 0.0:
        return PSNR_CAP_DB
    return min(PSNR_CAP_DB, 10.0 * math.log10(255.0**2 / mse))


# --- noise -------------------------------------------------------------------------------------


def _quads(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    h, w = x.shape[0] // 2 * 2, x.shape[1] // 2 * 2
    return x[0:h:2, 0:w:2], x[0:h:2, 1:w:2], x[1:h:2, 0:w:2], x[1:h:2, 1:w:2]


def _median_abs_int(x: np.ndarray) -> float:
    """Median of |x| for an integer array, by counting (exact, O(n))."""
    counts = np.bincount(np.abs(x).ravel())
    return float(np.searchsorted(np.cumsum(counts), (x.size + 1) // 2))


def noise_sigma_plane(plane: np.ndarray) -> tuple[float, float]:
    """(finest-octave, two-octave) noise σ of one integer plane (a uint8 channel, or a signed
    difference of two; 0–255 scale).

    The finest octave is the classic estimator (Donoho's MAD of the finest diagonal wavelet band,
    what scikit-image's ``estimate_sigma`` computes): exact for white noise, but blind to noise
    that a light blur has pushed one octave down — it reads a quarter to a half of such noise.
    The two-octave estimate is the RMS of the MAD estimates of the two finest diagonal (Haar)
    bands: for white noise both bands hold σ²; for noise correlated over a pixel or two the bands
    split its energy and their mean tracks it (measured in docs/quality-gate.md). Integer Haar
    sums and counting medians keep it exact and cheap.
    """
    x = plane.astype(np.int32)
    a, b, c, d = _quads(x)
    s1 = _median_abs_int(a - b - c + d) / 2.0 * _MAD_TO_SIGMA  # orthonormal HH1 = (a-b-c+d)/2
    ll2 = a + b + c + d  # 2 × LL1
    if min(ll2.shape) < 2:
        return s1, s1
    a, b, c, d = _quads(ll2)
    s2 = _median_abs_int(a - b - c + d) / 4.0 * _MAD_TO_SIGMA  # HH2 = (·)/4 in these units
    return s1, math.sqrt((s1 * s1 + s2 * s2) / 2.0)


def noise_sigma(img: ImageLike) -> float | None:
    """Two-octave noise σ (0–255) of an RGB image, the mean over its channels.

    Per channel, like the request's ``noise_level``. None for images under 4×4 pixels.
    """
    rgb = as_rgb_array(img)
    if min(rgb.shape[:2]) < 4:
        return None
    return float(np.mean([noise_sigma_plane(rgb[:, :, c])[1] for c in range(3)]))


def white_noise_sigma(img: np.ndarray) -> float | None:
    """Finest-octave noise σ of an (H, W, 3) integer array (uint8 image, or a signed difference
    of two images), the mean over its channels: the classic estimator, right for white noise."""
    if min(img.shape[:2]) < 2:
        return None
    return float(np.mean([noise_sigma_plane(img[:, :, c])[0] for c in range(img.shape[2])]))


def _white_sigma_float(plane: np.ndarray) -> float:
    a, b, c, d = _quads(plane)
    return float(np.median(np.abs(a - b - c + d))) * 0.5 * _MAD_TO_SIGMA


# --- colour --------------------------------------------------------------------------------------


def _srgb_to_lab(rgb: np.ndarray) -> np.ndarray:
    """CIELAB (D65) of sRGB colours in [0, 1], shape (..., 3)."""
    c = np.where(rgb <= 0.04045, rgb / 12.92, ((rgb + 0.055) / 1.055) ** 2.4)
    m = np.array(
        [[0.4124564, 0.3575761, 0.1804375], [0.2126729, 0.7151522, 0.0721750],
         [0.0193339, 0.1191920, 0.9503041]]
    )  # fmt: skip
    xyz = c @ m.T / np.array([0.95047, 1.0, 1.08883])
    f = np.where(xyz > (6 / 29) ** 3, np.cbrt(xyz), xyz / (3 * (6 / 29) ** 2) + 4 / 29)
    lab_l = 116 * f[..., 1] - 16
    return np.stack([lab_l, 500 * (f[..., 0] - f[..., 1]), 200 * (f[..., 1] - f[..., 2])], -1)


def _delta_e(mean_a: np.ndarray, mean_b: np.ndarray) -> float:
    la = _srgb_to_lab(np.asarray(mean_a, np.float64) / 255.0)
    lb = _srgb_to_lab(np.asarray(mean_b, np.float64) / 255.0)
    return float(np.linalg.norm(la - lb))


def color_shift(a: ImageLike, b: ImageLike) -> float:
    """ΔE76 between the mean colours of two images (any sizes). A global cast moves the mean
    colour; changes of content mostly do not."""
    return _delta_e(_Img(a).mean_rgb(), _Img(b).mean_rgb())


# --- denoise -------------------------------------------------------------------------------------


@lru_cache(maxsize=8)
def _band_gain(s1: float, s2: float) -> float:
    """Σ h² of the DoG(s1, s2) filter as scipy applies it: the factor white-noise variance gets."""
    size = 2 * int(4 * s2 + 0.5) + 3
    imp = np.zeros((size, size), dtype=np.float64)
    imp[size // 2, size // 2] = 1.0
    h = ndi.gaussian_filter(imp, s1) - ndi.gaussian_filter(imp, s2)
    return float((h * h).sum())


def _band_energy(plane: np.ndarray, s1: float, s2: float) -> float:
    g1 = ndi.gaussian_filter(plane, s1)
    # Gaussians compose: G(s2) = G(√(s2² − s1²)) ∘ G(s1), a shorter second kernel.
    band = g1 - ndi.gaussian_filter(g1, math.sqrt(s2 * s2 - s1 * s1))
    return float(np.mean(band * band, dtype=np.float64))


def _box_mean(f: np.ndarray, k: int) -> np.ndarray:
    h, w = f.shape[0] // k * k, f.shape[1] // k * k
    return f[:h, :w].reshape(h // k, k, w // k, k, -1).mean(axis=(1, 3))


def denoise_metrics(output: ImageLike, source: ImageLike) -> dict[str, float | None]:
    """noise_in, noise_out, denoise_detail, lowpass_psnr and color_shift of one denoised row."""
    out = _Img(output)
    src = _Img(source if _size_of(source) == out.size else _resize(as_rgb_array(source), out.size))
    res: dict[str, float | None] = {
        "noise_in": white_noise_sigma(src.rgb),
        "noise_removed": white_noise_sigma(src.rgb.astype(np.int16) - out.rgb.astype(np.int16)),
        "noise_out": noise_sigma(out.rgb),
        "denoise_detail": None,
        "lowpass_psnr": None,
        "color_shift": _delta_e(out.mean_rgb(), src.mean_rgb()),
    }
    if min(out.rgb.shape[:2]) < 8:
        return res
    # The input's noise is white by the operation's contract (Gaussian noise of noise_level), so
    # its band energy is σ² × the band's gain; the finest-octave estimate measures σ exactly.
    sigma_white = _white_sigma_float(src.luma)
    s1, s2 = _DETAIL_BAND
    noise_energy = sigma_white**2 * _band_gain(s1, s2)
    signal_in = _band_energy(src.luma, s1, s2) - noise_energy
    if signal_in > _MIN_BAND_SNR * max(noise_energy, 1.0):
        res["denoise_detail"] = _band_energy(out.luma, s1, s2) / signal_in
    # Block means over k×k pixels divide white noise by k; 4×4 leaves σ/4 (σ 50 -> 12.5).
    k = 4 if min(out.rgb.shape[:2]) >= 16 else 2
    res["lowpass_psnr"] = psnr_db(_box_mean(out.f, k), _box_mean(src.f, k))
    return res


def _size_of(img: ImageLike) -> tuple[int, int]:
    if isinstance(img, Image.Image):
        return img.size
    arr = np.asarray(img)
    return arr.shape[1], arr.shape[0]


# --- upscale -------------------------------------------------------------------------------------


def _gradient_energy(plane: np.ndarray) -> float:
    gx = np.diff(plane, axis=1)
    gy = np.diff(plane, axis=0)
    return float(np.mean(gx * gx, dtype=np.float64)) + float(np.mean(gy * gy, dtype=np.float64))


def upscale_metrics(output: ImageLike, source: ImageLike) -> dict[str, float | None]:
    """consistency_psnr, upscale_detail and color_shift of one upscaled row (source = low-res)."""
    out, src = _Img(output), _Img(source)
    back = _resize(out.rgb, src.size)
    bicubic = _Img(_resize(src.rgb, out.size))
    e_bicubic = _gradient_energy(bicubic.luma)
    detail = _gradient_energy(out.luma) / e_bicubic if e_bicubic > 1e-6 else None
    return {
        "consistency_psnr": psnr_db(back, src.rgb),
        "upscale_detail": detail,
        "color_shift": _delta_e(out.mean_rgb(), src.mean_rgb()),
    }


# --- img2img -------------------------------------------------------------------------------------

_SSIM_K1, _SSIM_K2 = 0.01, 0.03


def ssim_luma(a: ImageLike, b: ImageLike) -> float | None:
    """SSIM of the lumas of two same-size images: Wang et al. with a 7×7 uniform window, peak 255
    and sample covariances — the numbers of scikit-image's ``structural_similarity`` defaults
    (tested), at a fraction of its cost. None for images under 3 px."""
    ya = a.luma if isinstance(a, _Img) else _Img(a).luma
    yb = b.luma if isinstance(b, _Img) else _Img(b).luma
    return _ssim(ya, yb)


def _ssim(x: np.ndarray, y: np.ndarray) -> float | None:
    x, y = x.astype(np.float64), y.astype(np.float64)
    side = min(x.shape)
    if side < 3:
        return None
    win = min(7, side if side % 2 else side - 1)
    n = win * win
    cov_norm = n / (n - 1.0)

    def box(v: np.ndarray) -> np.ndarray:
        return ndi.uniform_filter(v, size=win, mode="reflect")

    ux, uy = box(x), box(y)
    vx = cov_norm * (box(x * x) - ux * ux)
    vy = cov_norm * (box(y * y) - uy * uy)
    vxy = cov_norm * (box(x * y) - ux * uy)
    c1, c2 = (_SSIM_K1 * 255.0) ** 2, (_SSIM_K2 * 255.0) ** 2
    s = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux * ux + uy * uy + c1) * (vx + vy + c2))
    pad = (win - 1) // 2
    return float(s[pad : s.shape[0] - pad, pad : s.shape[1] - pad].mean(dtype=np.float64))


def img2img_metrics(output: ImageLike, source: ImageLike) -> dict[str, float | None]:
    """source_psnr, source_ssim and color_shift of one variant against its source.

    ``source`` is the image the variant was made from at the output's size (the runner's fitted
    init image); another size is resized (bicubic) to the output's.
    """
    out = _Img(output)
    src = _Img(source if _size_of(source) == out.size else _resize(as_rgb_array(source), out.size))
    return {
        "source_psnr": psnr_db(out.rgb, src.rgb),
        "source_ssim": _ssim(out.luma, src.luma),
        "color_shift": _delta_e(out.mean_rgb(), src.mean_rgb()),
    }


# --- inpaint -------------------------------------------------------------------------------------


def inpaint_metrics(
    output: ImageLike, source: ImageLike, mask: ImageLike, margin: int | None = None
) -> dict[str, float | None]:
    """unmasked_psnr, masked_psnr and color_shift (outside the mask) of one inpainted row.

    ``mask`` is white (≥128) where the model may paint, at any size (resized to the output's).
    Pixels within ``margin`` px of the mask count as neither inside nor outside: latent
    inpainters blend the mask edge over one latent cell (8 px for Stable Diffusion). Default
    margin: 8 px, at most an eighth of the image's short side.
    """
    out = _Img(output)
    src = _Img(source if _size_of(source) == out.size else _resize(as_rgb_array(source), out.size))
    m = mask if isinstance(mask, Image.Image) else Image.fromarray(np.asarray(mask))
    m = m.convert("L")
    if m.size != out.size:
        m = m.resize(out.size, Image.Resampling.NEAREST)
    inside = np.asarray(m) >= 128
    if margin is None:
        margin = max(0, min(8, min(out.rgb.shape[:2]) // 8))
    grown = (
        ndi.binary_dilation(inside, iterations=margin) if margin > 0 and inside.any() else inside
    )
    outside = ~grown
    shift = _delta_e(out.mean_rgb(outside), src.mean_rgb(outside)) if outside.any() else None
    return {
        "unmasked_psnr": psnr_db(out.rgb, src.rgb, outside),
        "masked_psnr": psnr_db(out.rgb, src.rgb, inside),
        "color_shift": shift,
    }


# --- one entry point -----------------------------------------------------------------------------


def effect_metrics(
    operation: EffectOperation,
    output: ImageLike,
    source: ImageLike | None = None,
    *,
    mask: ImageLike | None = None,
) -> dict[str, float | None]:
    """All ``EFFECT_NAMES`` for one row: the operation's columns filled, every other one None.

    ``source`` is the row's reference as the runner keeps it: the noisy input (denoise), the
    low-res input (upscale), the fitted init image (img2img), the input (inpaint); None for
    generate. ``mask`` is needed for inpaint.
    """
    row: dict[str, float | None] = dict.fromkeys(EFFECT_NAMES)
    if operation == "generate":
        return row
    if source is None:
        raise ValueError(f"{operation} effect metrics need the row's source image")
    if operation == "denoise":
        row.update(denoise_metrics(output, source))
    elif operation == "upscale":
        row.update(upscale_metrics(output, source))
    elif operation == "img2img":
        row.update(img2img_metrics(output, source))
    elif operation == "inpaint":
        if mask is None:
            raise ValueError("inpaint effect metrics need the row's mask")
        row.update(inpaint_metrics(output, source, mask))
    else:
        raise ValueError(f"unknown operation {operation!r}")
    return row


# --- checks over a batch of rows -----------------------------------------------------------------


@dataclass(frozen=True)
class EffectCheckResult:
    """One check over a batch of rows: ``passed[i]`` says whether row i meets ``requirement``."""

    name: str
    requirement: str
    columns: tuple[str, ...]
    passed: np.ndarray


def _as_float(values: Any) -> np.ndarray:
    """Floats with NaN for nulls, from a list, numpy array, pandas Series or Arrow array."""
    if hasattr(values, "to_numpy") and not isinstance(values, np.ndarray):
        try:  # pyarrow arrays/chunked arrays: nulls become NaN
            return np.asarray(values.to_numpy(zero_copy_only=False), dtype=np.float64)
        except TypeError:  # pandas: to_numpy() takes no such argument
            return np.asarray(values.to_numpy(dtype=np.float64, na_value=np.nan))
    try:
        return np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError):  # a list with None in it
        return np.array([np.nan if v is None else float(v) for v in values], dtype=np.float64)


def effect_checks(
    operation: EffectOperation,
    columns: Mapping[str, Sequence[float | None] | np.ndarray],
    *,
    noise_level: float | None = None,
    strength: float | None = None,
    thresholds: EffectThresholds | None = None,
) -> list[EffectCheckResult]:
    """Apply the operation's row-level effect checks to a batch of metric rows.

    ``columns`` maps column names to equal-length sequences (a pandas DataFrame, a dict of Arrow
    columns as lists or numpy arrays); null/NaN fails a check unless said otherwise below.
    ``noise_level`` (denoise; None when the request leaves it to per-image estimation) and
    ``strength`` (img2img) are the request's. Vectorised: call it shard by shard and add up the
    failures.
    """
    t = thresholds or EffectThresholds()
    get = {name: _as_float(columns[name]) for name in columns if name in EFFECT_NAMES}

    def need(name: str) -> np.ndarray:
        if name not in get:
            raise KeyError(f"effect check of {operation!r} needs column {name!r}; it is missing")
        return get[name]

    def ok(mask: np.ndarray) -> np.ndarray:
        return np.asarray(mask, dtype=bool)

    out: list[EffectCheckResult] = []
    with np.errstate(invalid="ignore"):
        if operation == "denoise":
            n_in, removed = need("noise_in"), need("noise_removed")
            # Unset noise_level: each image's own (estimated) noise is what was to be removed.
            expected = n_in if noise_level is None else np.minimum(n_in, float(noise_level))
            level = "noise_in" if noise_level is None else f"min(noise_in, {noise_level:g})"
            out.append(
                EffectCheckResult(
                    "denoise_noise_removed",
                    f"noise_removed ≥ {t.denoise_min_removed_ratio:g} × {level} (rows whose "
                    f"{level} is below {t.denoise_min_measurable_noise:g} pass)",
                    ("noise_removed", "noise_in"),
                    ok(
                        (expected < t.denoise_min_measurable_noise)
                        | (removed >= t.denoise_min_removed_ratio * expected)
                    ),
                )
            )
            detail = need("denoise_detail")
            out.append(
                EffectCheckResult(
                    "denoise_detail_kept",
                    f"denoise_detail ≥ {t.denoise_min_detail:g} (null: input without "
                    "measurable structure, passes)",
                    ("denoise_detail",),
                    ok(np.isnan(detail) | (detail >= t.denoise_min_detail)),
                )
            )
            lp = need("lowpass_psnr")
            out.append(
                EffectCheckResult(
                    "denoise_same_picture",
                    f"lowpass_psnr ≥ {t.denoise_min_lowpass_psnr:g} dB",
                    ("lowpass_psnr",),
                    ok(lp >= t.denoise_min_lowpass_psnr),
                )
            )
        elif operation == "upscale":
            cons, det = need("consistency_psnr"), need("upscale_detail")
            out.append(
                EffectCheckResult(
                    "upscale_consistent",
                    f"consistency_psnr ≥ {t.upscale_min_consistency_psnr:g} dB",
                    ("consistency_psnr",),
                    ok(cons >= t.upscale_min_consistency_psnr),
                )
            )
            out.append(
                EffectCheckResult(
                    "upscale_detail_added",
                    f"upscale_detail ≥ {t.upscale_min_detail:g} (null: flat input, passes)",
                    ("upscale_detail",),
                    ok(np.isnan(det) | (det >= t.upscale_min_detail)),
                )
            )
        elif operation == "img2img":
            if strength is None:
                raise ValueError("img2img effect checks need the request's strength")
            sp, ss = need("source_psnr"), need("source_ssim")
            out.append(
                EffectCheckResult(
                    "img2img_not_a_copy",
                    f"source_psnr < {t.img2img_max_source_psnr:g} dB",
                    ("source_psnr",),
                    ok(sp < t.img2img_max_source_psnr),
                )
            )
            floor = img2img_min_ssim(strength, t)
            out.append(
                EffectCheckResult(
                    "img2img_related_to_source",
                    f"source_ssim ≥ {floor:.3g} (from {t.img2img_min_ssim_at_zero:g} at strength 0 "
                    f"to {t.img2img_min_ssim_at_one:g} at 1; strength {strength:g})",
                    ("source_ssim",),
                    ok(ss >= floor),
                )
            )
        elif operation == "inpaint":
            un, ma = need("unmasked_psnr"), need("masked_psnr")
            # null: the mask covers everything (nothing to keep) or nothing (nothing to change)
            out.append(
                EffectCheckResult(
                    "inpaint_unmasked_kept",
                    f"unmasked_psnr ≥ {t.inpaint_min_unmasked_psnr:g} dB (null: all masked)",
                    ("unmasked_psnr",),
                    ok(np.isnan(un) | (un >= t.inpaint_min_unmasked_psnr)),
                )
            )
            out.append(
                EffectCheckResult(
                    "inpaint_masked_changed",
                    f"unmasked_psnr − masked_psnr ≥ {t.inpaint_min_change_db:g} dB (null: empty "
                    "mask or nothing kept)",
                    ("unmasked_psnr", "masked_psnr"),
                    ok(np.isnan(un) | np.isnan(ma) | (un - ma >= t.inpaint_min_change_db)),
                )
            )
        elif operation != "generate":
            raise ValueError(f"unknown operation {operation!r}")
        limit = (
            img2img_max_color_shift(strength or 0.0, t)
            if operation == "img2img"
            else t.max_color_shift
        )
        if operation in ("denoise", "upscale", "inpaint", "img2img") and limit is not None:
            cs = need("color_shift")
            out.append(
                EffectCheckResult(
                    "color_kept",
                    f"color_shift ≤ {limit:.3g} ΔE",
                    ("color_shift",),
                    ok(cs <= limit),
                )
            )
    return out


def img2img_min_ssim(strength: float, thresholds: EffectThresholds | None = None) -> float:
    """Lowest source_ssim a variant at ``strength`` may have."""
    t = thresholds or EffectThresholds()
    s = min(1.0, max(0.0, float(strength)))
    return t.img2img_min_ssim_at_zero + (t.img2img_min_ssim_at_one - t.img2img_min_ssim_at_zero) * s


def img2img_max_color_shift(
    strength: float, thresholds: EffectThresholds | None = None
) -> float | None:
    """Largest mean-colour ΔE a variant at ``strength`` may have; None: not checked."""
    t = thresholds or EffectThresholds()
    if t.img2img_color_shift_base is None:
        return None
    return t.img2img_color_shift_base + t.img2img_color_shift_slope * float(strength)
