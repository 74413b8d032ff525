"""Training and held-out photos from scikit-image's offline data (no downloads).

The held-out photos are never used in training; the evaluation and the tests use only them.
`chelsea` and `cat` are the same photo, so both sit on the same side of the split.
"""

from __future__ import annotations

import numpy as np
from PIL import Image
from skimage import data

HELD_OUT: tuple[str, ...] = ("astronaut", "coffee", "camera")
TRAIN: tuple[str, ...] = (
    "chelsea",
    "rocket",
    "immunohistochemistry",
    "hubble_deep_field",
    "retina",
    "stereo_motorcycle",
    "coins",
    "clock",
    "brick",
    "grass",
    "gravel",
    "moon",
    "page",
    "text",
    "cell",
)


def load_photo(name: str) -> np.ndarray:
    """An skimage.data photo as uint8 (H,W,3); grey photos are repeated to three channels."""
    img = getattr(data, name)()
    if isinstance(img, tuple):  # stereo_motorcycle returns (left, right, disparity)
        img = img[0]
    img = np.asarray(img)
    if img.dtype != np.uint8:
        img = (np.clip(img, 0, 1) * 255).round().astype(np.uint8)
    if img.ndim == 2:
        img = np.repeat(img[:, :, None], 3, axis=2)
    return np.ascontiguousarray(img[:, :, :3])


def training_photos(min_side: int = 64) -> list[np.ndarray]:
    """Training photos at full and half scale (half scale packs more detail into a crop)."""
    out = []
    for name in TRAIN:
        img = load_photo(name)
        out.append(img)
        h, w = img.shape[:2]
        if min(h, w) // 2 >= min_side:
            half = Image.fromarray(img).resize((w // 2, h // 2), Image.Resampling.LANCZOS)
            out.append(np.asarray(half))
    return out


def faces_32() -> np.ndarray:
    """The 100 LFW face crops (25×25 grey) resized to 32×32 uint8, shape (100,32,32).

    lfw_subset() holds 100 faces followed by 100 non-face background crops; only the faces.
    """
    faces = data.lfw_subset()[:100]
    out = [
        np.asarray(
            Image.fromarray((f * 255).round().astype(np.uint8)).resize(
                (32, 32), Image.Resampling.BICUBIC
            )
        )
        for f in faces
    ]
    return np.stack(out)


def pil_resize(img: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bicubic resize of uint8 (H,W,3) to (width,height) with PIL, as the upscale op does."""
    return np.asarray(Image.fromarray(img).resize(size, Image.Resampling.BICUBIC))


def degrade_lr(hr: np.ndarray, factor: int) -> tuple[np.ndarray, np.ndarray]:
    """(low-res, bicubic-upsampled back to the HR size) for a uint8 HR image."""
    h, w = hr.shape[:2]
    lr = pil_resize(hr, (w // factor, h // factor))
    return lr, pil_resize(lr, (w, h))
