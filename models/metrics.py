"""Per-row metrics of a final output, keyed exactly like ``METRIC_FIELDS`` in schemas/rows.py.

Metrics describe the bytes that are actually stored: either the PNG is decoded again, or the
caller passes the pixels it was encoded from by ``encode_png_array``, which checks that its
stream inflates back to them (a 512² decode costs more CPU than that encode).
"""

from __future__ import annotations

import io
import math
from typing import Any, Literal

import numpy as np
from PIL import Image

from augflow.schemas.rows import METRIC_FIELDS

#: PSNR of identical images is infinite; it is reported as this cap so the column stays finite
#: (Arrow/JSON/GX handle it like any other number) and "identical" still sorts above everything.
PSNR_CAP_DB = 100.0

#: values summed per step in mean_and_std: a 512² RGB image is one step
_SUM_BLOCK = 1 << 20

METRIC_NAMES: tuple[str, ...] = tuple(f.name for f in METRIC_FIELDS)

#: how an output is compared with its source (``OperationSpec.faithfulness`` of the operation)
Faithfulness = Literal["none", "same_size", "downscaled"]


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR in dB of two uint8 arrays of the same shape (peak 255), capped at ``PSNR_CAP_DB``."""
    if a.shape != b.shape:
        raise ValueError(f"psnr needs equal shapes, got {a.shape} and {b.shape}")
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    if mse == 0.0:
        return PSNR_CAP_DB
    return min(PSNR_CAP_DB, 10.0 * math.log10(255.0**2 / mse))


def reference_for_psnr(
    faithfulness: Faithfulness, output: Image.Image, reference: Image.Image
) -> tuple[np.ndarray, np.ndarray]:
    """The two arrays faithfulness is measured on.

    ``downscaled`` (upscale): the output is reduced back to the input size (area average) and
    compared to the input, so the metric asks "is this still the same picture", not "did it
    invent the same details". Otherwise the reference is resized to the output size if needed
    (img2img's source).
    """
    if faithfulness == "downscaled":
        small = output.resize(reference.size, Image.Resampling.BOX)
        return np.asarray(small), np.asarray(reference.convert("RGB"))
    ref = reference.convert("RGB")
    if ref.size != output.size:
        ref = ref.resize(output.size, Image.Resampling.BICUBIC)
    return np.asarray(output), np.asarray(ref)


def compute_metrics(
    png: bytes | None,
    *,
    faithfulness: Faithfulness,
    expected_size: tuple[int, int],
    has_nan: bool,
    min_pixel_std: float,
    reference: Image.Image | None = None,
    pixels: np.ndarray | None = None,
) -> dict[str, Any]:
    """Metrics of one output row. ``expected_size`` is (w, h); ``reference`` is None for generate.

    ``pixels``: the RGB uint8 array ``png`` was made from by ``encode_png_array``; the PNG is then
    not decoded again. An undecodable PNG still yields a full row (decodable False, zeros) so the
    quality gate can count it instead of the writer crashing.
    """
    ew, eh = expected_size
    row: dict[str, Any] = {
        "width": 0,
        "height": 0,
        "expected_width": int(ew),
        "expected_height": int(eh),
        "decodable": False,
        "pixel_mean": 0.0,
        "pixel_std": 0.0,
        "has_nan": bool(has_nan),
        "is_blank": True,
        "faithfulness_psnr": None,
    }
    if pixels is not None and png:
        arr: np.ndarray | None = pixels
    else:
        decoded = _redecode(png)
        arr = None if decoded is None else np.asarray(decoded)
    if arr is not None:
        mean, std = mean_and_std(arr)
        row.update(
            width=int(arr.shape[1]),
            height=int(arr.shape[0]),
            decodable=True,
            pixel_mean=mean,
            pixel_std=std,
            is_blank=std < min_pixel_std,
        )
        if reference is not None and faithfulness != "none":
            out_arr, ref_arr = reference_for_psnr(faithfulness, Image.fromarray(arr), reference)
            row["faithfulness_psnr"] = psnr(out_arr, ref_arr)
    if tuple(row) != METRIC_NAMES:  # keeps this module honest if the schema grows a column
        raise RuntimeError(f"metric keys {tuple(row)} drifted from METRIC_FIELDS {METRIC_NAMES}")
    return row


def mean_and_std(pixels: np.ndarray) -> tuple[float, float]:
    """Mean and (population) standard deviation of a uint8 array over all its values.

    From the exact integer sums of the values and their squares (~3x faster than float64
    ``mean()`` and ``std()`` on a 512² image, and releasing the GIL), in blocks so a huge image
    needs no full-size temporary; the result does not depend on summation order.
    """
    flat = pixels.reshape(-1)
    s1 = s2 = 0
    for at in range(0, flat.size, _SUM_BLOCK):
        block = flat[at : at + _SUM_BLOCK]
        wide = block.astype(np.uint32)
        s1 += int(block.sum(dtype=np.uint64))
        s2 += int(np.multiply(wide, wide, out=wide).sum(dtype=np.uint64))
    n = int(flat.size)
    var = (n * s2 - s1 * s1) / (n * n)  # exact integers until this one division
    return s1 / n, math.sqrt(var)


def _redecode(png: bytes | None) -> Image.Image | None:
    if not png:
        return None
    try:
        img = Image.open(io.BytesIO(png), formats=["PNG"])
        img.load()
        return img.convert("RGB")
    except Exception:  # any decoder failure means "not decodable", which is the metric
        return None
