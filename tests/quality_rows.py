"""Made-up output rows with real images, for the quality gate's tests (set checks, evaluate)."""

from __future__ import annotations

import io
from typing import Any

import numpy as np
from PIL import Image


def photo(k: int, size: int = 48) -> np.ndarray:
    """Distinct, structured images (pHash of pure noise is fine too, but smooth pictures are what
    the hash is for): random blobs at random places."""
    rng = np.random.default_rng(k)
    yy, xx = np.mgrid[0:size, 0:size]
    img = np.zeros((size, size, 3))
    for _ in range(6):
        cy, cx, r = [*rng.uniform(0, size, 2).tolist(), rng.uniform(4, 14)]
        img += np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / r**2)[..., None] * rng.uniform(
            -120, 120, 3
        )
    return np.clip(128 + img, 0, 255).astype(np.uint8)


def png(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "PNG")
    return buf.getvalue()


def rows(images: list[np.ndarray]) -> list[dict[str, Any]]:
    return [
        {
            "image": {"bytes": png(img), "path": None},
            "row_id": f"row{i:04d}",
            "source_id": None,
            "variant": 0,
            "operation": "generate",
            "width": img.shape[1],
            "height": img.shape[0],
            "expected_width": img.shape[1],
            "expected_height": img.shape[0],
            "decodable": True,
            "pixel_mean": float(img.mean()),
            "pixel_std": float(img.std()),
            "has_nan": False,
            "is_blank": False,
            "status": "ok",
        }
        for i, img in enumerate(images)
    ]
