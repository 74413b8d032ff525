"""Training and held-out photos, all read from files that ship inside Python packages (no downloads).

The two sets come from **disjoint sources**, so the evaluation measures photos of a kind the
models never saw, not other crops of a training photo:

- **Training**: every photo of scikit-image's offline data (``skimage/data``) plus the sample
  photos that a few PyPI packages ship, which are read as files and never imported (they are
  needed only to *train*, so they are not dependencies of augflow; install them with
  ``pip install --no-deps imgaug ultralytics mahotas`` before training — missing ones are skipped
  with a warning, which changes the training data and so the result).
- **Held out** (evaluation and tests only, never trained on): scikit-learn's two sample photos
  (``china``, ``flower``: saturated colours, JPEG) and PyWavelets' ``aero`` (a grey aerial photo).
  Both packages are runtime dependencies already, so the evaluation and the tests need nothing
  extra. PyWavelets' ``camera`` is scikit-image's ``camera``, so it is not used at all.
"""

from __future__ import annotations

import importlib.util
import warnings
from pathlib import Path

import numpy as np
from PIL import Image

#: scikit-image photos (names of ``skimage.data`` functions). ``cat`` is ``chelsea`` and
#: ``stereo_motorcycle`` is ``motorcycle_left``, so each photo appears once.
SKIMAGE_TRAIN: tuple[str, ...] = (
    "astronaut",
    "coffee",
    "camera",
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
    "colorwheel",
)

#: Photos shipped as files inside PyPI packages: name -> (package, path inside the package).
PACKAGE_TRAIN: dict[str, tuple[str, str]] = {
    "quokka": ("imgaug", "quokka.jpg"),
    "bus": ("ultralytics", "assets/bus.jpg"),
    "zidane": ("ultralytics", "assets/zidane.jpg"),
    "department_store": ("mahotas", "demos/data/DepartmentStore.jpg"),
    "luispedro": ("mahotas", "demos/data/luispedro.jpg"),
}

HELD_OUT: tuple[str, ...] = ("china", "flower", "aero")
#: Evaluation crops (top-left y, x) of each held-out photo, 256×256: the subject and, for the two
#: colour photos, a second region with saturated colour (trees, teal leaves).
HELD_OUT_CROPS: dict[str, tuple[tuple[int, int], ...]] = {
    "china": ((100, 60), (150, 384)),
    "flower": ((80, 180), (150, 0)),
    "aero": ((128, 128),),
}


def _skimage_photo(name: str) -> np.ndarray:
    from skimage import data

    img = getattr(data, name)()
    if isinstance(img, tuple):  # stereo_motorcycle returns (left, right, disparity)
        img = img[0]
    return np.asarray(img)


def _package_file(package: str, relpath: str) -> Path | None:
    # find_spec locates the package without importing it (these packages' imports pull in
    # heavy dependencies that augflow does not have, and we only want their files).
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / relpath
    return path if path.is_file() else None


def to_rgb_uint8(img: np.ndarray) -> np.ndarray:
    """Any photo array (grey or RGB(A), uint8 or float in [0,1]) → contiguous uint8 (H,W,3)."""
    img = np.asarray(img)
    if img.dtype != np.uint8:
        scale = 255.0 if img.max() <= 1.0 else 1.0
        img = (np.clip(img * scale, 0, 255)).round().astype(np.uint8)
    if img.ndim == 2:
        img = np.repeat(img[:, :, None], 3, axis=2)
    return np.ascontiguousarray(img[:, :, :3])


def load_photo(name: str) -> np.ndarray:
    """A training or held-out photo by name as uint8 (H,W,3); grey photos repeat to 3 channels."""
    if name in ("china", "flower"):
        from sklearn.datasets import load_sample_image

        return to_rgb_uint8(load_sample_image(f"{name}.jpg"))
    if name == "aero":
        import pywt.data

        return to_rgb_uint8(pywt.data.aero().astype(np.uint8))
    if name in PACKAGE_TRAIN:
        package, rel = PACKAGE_TRAIN[name]
        path = _package_file(package, rel)
        if path is None:
            raise FileNotFoundError(
                f"training photo {name!r} ships in the {package!r} package, which is not "
                f"installed; run `pip install --no-deps {package}`"
            )
        with Image.open(path) as im:
            return to_rgb_uint8(np.asarray(im.convert("RGB")))
    if name in SKIMAGE_TRAIN:
        return to_rgb_uint8(_skimage_photo(name))
    raise KeyError(f"unknown photo {name!r}")


def training_names() -> list[str]:
    """Names of the training photos available here (package photos whose package is missing are
    skipped with a warning)."""
    names = list(SKIMAGE_TRAIN)
    missing = []
    for name, (package, rel) in PACKAGE_TRAIN.items():
        if _package_file(package, rel) is None:
            missing.append(f"{name} ({package})")
        else:
            names.append(name)
    if missing:
        warnings.warn(
            "training photos skipped because their package is not installed: " + ", ".join(missing),
            stacklevel=2,
        )
    return names


def training_photos(min_side: int = 64) -> list[np.ndarray]:
    """Training photos at full and half scale (half scale packs more detail into a crop and
    softens the JPEG artefacts of the package photos)."""
    out = []
    for name in training_names():
        img = load_photo(name)
        out.append(img)
        h, w = img.shape[:2]
        if min(h, w) // 2 >= min_side:
            half = Image.fromarray(img).resize((w // 2, h // 2), Image.Resampling.LANCZOS)
            out.append(np.asarray(half))
    return [p for p in out if min(p.shape[:2]) >= min_side]


def held_out_crops(size: int = 256) -> dict[str, np.ndarray]:
    """The evaluation crops, named ``photo`` or ``photo-2`` for a photo's second crop."""
    out = {}
    for name in HELD_OUT:
        img = load_photo(name)
        for k, (y, x) in enumerate(HELD_OUT_CROPS[name]):
            out[name if k == 0 else f"{name}-{k + 1}"] = img[y : y + size, x : x + size]
    return out


def faces_32() -> np.ndarray:
    """The 100 LFW face crops (25×25 grey) resized to 32×32 uint8, shape (100,32,32).

    lfw_subset() holds 100 faces followed by 100 non-face background crops; only the faces.
    """
    from skimage import data

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


def pil_resize(
    img: np.ndarray, size: tuple[int, int], resample: int = Image.Resampling.BICUBIC
) -> np.ndarray:
    """Resize uint8 (H,W,3) to (width,height) with PIL (bicubic by default, as the upscale op)."""
    return np.asarray(Image.fromarray(img).resize(size, resample))


def degrade_lr(
    hr: np.ndarray, factor: int, down: int = Image.Resampling.BICUBIC
) -> tuple[np.ndarray, np.ndarray]:
    """(low-res, PIL-bicubic-upsampled back to the HR size) for a uint8 HR image; ``down`` is
    the downscaling filter (the upscale operation always upsamples with bicubic)."""
    h, w = hr.shape[:2]
    lr = pil_resize(hr, (w // factor, h // factor), down)
    return lr, pil_resize(lr, (w, h))
