"""Per-row metrics of a final output, keyed exactly like ``METRIC_FIELDS`` in schemas/rows.py.

Metrics are computed from the encoded PNG (re-decoded), not from the tensor, so they describe the
bytes that are actually stored.
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
) -> dict[str, Any]:
    """Metrics of one output row. ``expected_size`` is (w, h); ``reference`` is None for generate.

    An undecodable PNG still yields a full row (decodable False, zeros) so the quality gate can
    count it instead of the writer crashing.
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
    img = _redecode(png)
    if img is not None:
        arr = np.asarray(img, dtype=np.float64)
        std = float(arr.std())
        row.update(
            width=img.width,
            height=img.height,
            decodable=True,
            pixel_mean=float(arr.mean()),
            pixel_std=std,
            is_blank=std < min_pixel_std,
        )
        if reference is not None and faithfulness != "none":
            out_arr, ref_arr = reference_for_psnr(faithfulness, img, reference)
            row["faithfulness_psnr"] = psnr(out_arr, ref_arr)
    if tuple(row) != METRIC_NAMES:  # keeps this module honest if the schema grows a column
        raise RuntimeError(f"metric keys {tuple(row)} drifted from METRIC_FIELDS {METRIC_NAMES}")
    return row


def _redecode(png: bytes | None) -> Image.Image | None:
    if not png:
        return None
    try:
        img = Image.open(io.BytesIO(png), formats=["PNG"])
        img.load()
        return img.convert("RGB")
    except Exception:  # any decoder failure means "not decodable", which is the metric
        return None
