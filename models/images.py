"""Safe image I/O and PIL <-> tensor conversion.

Inputs come from users' buckets, so decoding is defensive: a format allowlist, a pixel-count limit
checked from the header before any pixel is decoded, and one exception type with a readable reason
that the caller turns into a quarantine row.
"""

from __future__ import annotations

import io
import warnings
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

if TYPE_CHECKING:  # decoding needs no torch: the flow process decodes previews without it
    import torch

ALLOWED_FORMATS: tuple[str, ...] = ("PNG", "JPEG", "WEBP", "BMP", "TIFF")
MAX_PIXELS = 64_000_000
PNG_COMPRESS_LEVEL = 6


class ImageRejected(Exception):
    """An input could not be used as an image; ``reason`` is a short human sentence."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)


def decode_image(data: bytes, name: str, max_pixels: int = MAX_PIXELS) -> Image.Image:
    """Decode bytes into an RGB image, or raise :class:`ImageRejected` saying why not.

    ``name`` is only used in messages. EXIF orientation is applied (a phone photo should look the
    way its owner sees it) and transparency is composited over white so the result is deterministic.
    """
    limit_mp = max_pixels / 1_000_000
    try:
        with warnings.catch_warnings():
            # Pillow only warns between its limit and twice its limit; a warning is a bomb to us.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img: Image.Image = Image.open(io.BytesIO(data), formats=None)
            fmt = img.format or "unknown"
            if fmt not in ALLOWED_FORMATS:
                raise ImageRejected(
                    f"{name}: format {fmt} not allowed (allowed: {', '.join(ALLOWED_FORMATS)})"
                )
            w, h = img.size
            # Checked from the header, before any pixel data is decoded.
            if w * h > max_pixels:
                raise ImageRejected(
                    f"{name}: too large: {w}x{h} pixels exceeds the {limit_mp:g} MP limit"
                )
            if w == 0 or h == 0:
                raise ImageRejected(f"{name}: empty image ({w}x{h})")
            img.load()
            img = ImageOps.exif_transpose(img)
            return _to_rgb(img)
    except ImageRejected:
        raise
    except UnidentifiedImageError:
        raise ImageRejected(f"{name}: not an image: cannot identify image file") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageRejected(f"{name}: too large: {exc} (limit {limit_mp:g} MP)") from None
    except (OSError, ValueError, SyntaxError, EOFError) as exc:
        # Truncated or corrupt files surface as any of these from the codec plugins.
        raise ImageRejected(f"{name}: corrupt image: {exc}") from None


def _to_rgb(img: Image.Image) -> Image.Image:
    if img.mode == "RGB":
        return img
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        # 16-bit greyscale: scale to 8 bit instead of letting convert() clip at 255.
        arr = np.asarray(img, dtype=np.float64)
        peak = 65535.0 if arr.max(initial=0) > 255 else 255.0
        arr8 = np.clip(np.round(arr / peak * 255.0), 0, 255).astype(np.uint8)
        return Image.fromarray(arr8).convert("RGB")
    return img.convert("RGB")


def encode_png(img: Image.Image) -> bytes:
    """Encode as PNG with no metadata, so equal pixels always give equal bytes."""
    # A fresh image drops .info (ICC profile, EXIF, text), which PNG save would otherwise copy.
    clean = Image.frombytes(img.mode, img.size, img.tobytes())
    buf = io.BytesIO()
    clean.save(buf, format="PNG", compress_level=PNG_COMPRESS_LEVEL, optimize=False)
    return buf.getvalue()


def pil_to_tensor(images: list[Image.Image]) -> torch.Tensor:
    """RGB images of one size -> float32 tensor (B, 3, H, W) in [-1, 1]."""
    import torch

    arrays = [np.asarray(im.convert("RGB"), dtype=np.float32) for im in images]
    batch = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2)
    return batch / 127.5 - 1.0


def tensor_to_uint8(x: torch.Tensor) -> tuple[np.ndarray, list[bool]]:
    """(B, 3, H, W) in [-1, 1] -> uint8 (B, H, W, 3) and, per image, whether it had NaN/inf.

    Non-finite values never crash the run: they become 0 (mid grey) / ±1 so a PNG is still made
    and the quality gate, not an exception, decides.
    """
    import torch

    x = x.detach().to("cpu", torch.float32)
    finite = torch.isfinite(x).flatten(1).all(dim=1)
    x = torch.nan_to_num(x, nan=0.0, posinf=1.0, neginf=-1.0).clamp(-1.0, 1.0)
    arr = ((x + 1.0) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).contiguous().numpy()
    return arr, [not bool(f) for f in finite]


def tensor_to_pil(x: torch.Tensor) -> tuple[list[Image.Image], list[bool]]:
    """(B, 3, H, W) in [-1, 1] -> RGB images and per-image has-NaN flags."""
    arr, has_nan = tensor_to_uint8(x)
    return [Image.fromarray(a) for a in arr], has_nan
