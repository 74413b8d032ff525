"""Safe image I/O and PIL <-> tensor conversion.

Inputs come from users' buckets, so decoding is defensive. What :func:`open_image` guarantees for
any bytes at all: it returns an RGB image or raises :class:`ImageRejected` with a readable reason
(which the shard worker turns into a quarantine row), and nothing else escapes it.

- **Content, not names**: the bytes are sniffed; a file's extension is never consulted.
- **An allowlist of Pillow plugins** (``formats=``): only the PNG, JPEG (and its multi-picture
  variant MPO), WEBP, BMP, TIFF and GIF parsers ever see the bytes. Anything else is named from its
  magic number (``unsupported format: HEIC``, ``not an image: a PDF document``) without parsing it.
- **Limits checked from the header, before any pixel is decoded**: the pixel count (a decompression
  bomb declares a huge size in a tiny file), and, for sources, the shortest side and the aspect
  ratio (a 1x1 pixel or a 1x4000 strip is not a picture a diffusion model can work on).
- **One still picture per input**: an animation (GIF, APNG, animated WEBP) is refused, since which
  frame to augment is arbitrary; an MPO's first image (the primary one: the others are previews
  or stereo/depth companions) and a multi-page TIFF's first page are used, and noted in the row.
- **Bounded time**: :func:`decode_within` gives every decode a deadline.

No process-wide state is changed: no ``warnings.catch_warnings`` (not thread-safe), no Pillow
globals. Pillow's own bomb check still runs inside ``Image.open`` and is reported as too large.
"""

from __future__ import annotations

import io
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from augflow.models.png import encode_png_array
from augflow.schemas.errors import ImageRejected

if TYPE_CHECKING:  # decoding needs no torch: the flow process decodes previews without it
    import torch

__all__ = [
    "ACCEPTED_FORMATS",
    "ALLOWED_FORMATS",
    "DECODE_TIMEOUT_S",
    "MAX_FILE_BYTES",
    "MAX_PIXELS",
    "DecodeLimits",
    "Decoded",
    "ImageRejected",
    "chw_to_uint8",
    "decode_image",
    "decode_within",
    "encode_png",
    "host_float_images",
    "open_image",
    "pil_to_tensor",
    "sniff_format",
    "tensor_to_pil",
    "tensor_to_uint8",
]

#: The Pillow plugins allowed to parse input bytes (``Image.open(..., formats=...)``).
ALLOWED_FORMATS: tuple[str, ...] = ("PNG", "JPEG", "WEBP", "BMP", "TIFF", "GIF")
#: Formats a decoded image may report: the JPEG plugin opens multi-picture JPEGs as ``MPO``.
ACCEPTED_FORMATS: tuple[str, ...] = (*ALLOWED_FORMATS, "MPO")
MAX_PIXELS = 64_000_000
#: Bytes of one input file or Parquet cell: the encoded file is held in memory to decode it.
MAX_FILE_BYTES = 256 * 1024 * 1024
#: Seconds one decode may take (a 64 MP PNG decodes in about a second on one core).
DECODE_TIMEOUT_S = 30.0
PNG_COMPRESS_LEVEL = 6
#: modes whose pixels numpy sees as uint8 (H, W[, C]) with the channels PNG stores
_FAST_PNG_MODES = ("L", "LA", "RGB", "RGBA")

_ALPHA_MODES = ("RGBA", "LA", "PA", "La", "RGBa")
_INT_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")


@dataclass(frozen=True)
class DecodeLimits:
    """What an input must satisfy to be used. ``min_side``/``max_aspect_ratio`` apply to sources
    (``quality.min_side``/``quality.max_aspect_ratio``); masks and previews keep the defaults."""

    max_pixels: int = MAX_PIXELS
    min_side: int = 1
    max_aspect_ratio: float | None = None
    max_bytes: int = MAX_FILE_BYTES


@dataclass(frozen=True)
class Decoded:
    """An RGB image and, when a choice was made about the file (which frame, orientation), a note."""

    image: Image.Image
    note: str | None = None


def decode_image(data: bytes, name: str, max_pixels: int = MAX_PIXELS) -> Image.Image:
    """Decode bytes into an RGB image, or raise :class:`ImageRejected` saying why not.

    ``name`` is only used in messages. EXIF orientation is applied (a phone photo should look the
    way its owner sees it) and transparency is composited over white so the result is deterministic.
    """
    return open_image(data, name, DecodeLimits(max_pixels=max_pixels)).image


def decode_within(
    data: bytes, name: str, limits: DecodeLimits, timeout_s: float = DECODE_TIMEOUT_S
) -> Decoded:
    """:func:`open_image` with a deadline: a decode still running after ``timeout_s`` is rejected.

    Python cannot stop a thread inside a C codec, so a decode past its deadline is abandoned and
    finishes in the background; the pixel and byte limits bound what it can still cost.
    """
    box: list[Decoded | BaseException] = []
    done = threading.Event()

    def work() -> None:
        try:
            box.append(open_image(data, name, limits))
        except BaseException as exc:  # handed to the waiting thread, which re-raises it
            box.append(exc)
        finally:
            done.set()

    threading.Thread(target=work, name="augflow-decode", daemon=True).start()
    if not done.wait(timeout_s):
        raise ImageRejected(
            f"{name}: decoding took longer than {timeout_s:g} s; the file is abandoned as a "
            "possible decoder bomb"
        )
    result = box[0]
    if isinstance(result, BaseException):
        raise result
    return result


def open_image(data: bytes, name: str, limits: DecodeLimits | None = None) -> Decoded:
    """Decode ``data`` into an RGB image within ``limits``, or raise :class:`ImageRejected`."""
    limits = limits or DecodeLimits()
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise ImageRejected(f"{name}: not an image: got {type(data).__name__}, not bytes")
    if len(data) == 0:
        raise ImageRejected(f"{name}: not an image: empty file (0 bytes)")
    if len(data) > limits.max_bytes:
        raise ImageRejected(
            f"{name}: too large: the file exceeds the {limits.max_bytes / 2**20:g} MiB file limit"
        )
    try:
        return _open(bytes(data), name, limits)
    except ImageRejected:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        # the warning only arrives as an exception where someone made warnings errors
        raise ImageRejected(
            f"{name}: too large: {exc} (limit {limits.max_pixels / 1e6:g} MP)"
        ) from None
    except Exception as exc:
        # Every other failure comes from a codec reading hostile bytes (truncated data surfaces as
        # OSError, ValueError, SyntaxError, EOFError, struct.error, IndexError, ... depending on
        # the plugin). It says something about the file, never about augflow: quarantine it.
        kind = sniff_format(data) or "image"
        raise ImageRejected(f"{name}: corrupt {kind}: {type(exc).__name__}: {exc}") from None


def _open(data: bytes, name: str, limits: DecodeLimits) -> Decoded:
    try:
        img = Image.open(io.BytesIO(data), formats=ALLOWED_FORMATS)
    except UnidentifiedImageError:
        raise ImageRejected(f"{name}: {_unidentified(data)}") from None
    fmt = img.format or "unknown"
    if fmt not in ACCEPTED_FORMATS:  # cannot happen with formats=, kept as the invariant's guard
        raise ImageRejected(f"{name}: unsupported format: {fmt}")
    _check_size(img.size, name, limits)
    note = _frames(img, fmt, name)
    img.load()
    oriented, exif_note = _orient(img)
    rgb = _to_rgb(oriented, name)
    notes = [n for n in (note, exif_note) if n]
    return Decoded(rgb, "; ".join(notes) or None)


def _check_size(size: tuple[int, int], name: str, limits: DecodeLimits) -> None:
    """Refuse from the header's declared size, before any pixel is decoded."""
    w, h = size
    if w <= 0 or h <= 0:
        raise ImageRejected(f"{name}: empty image ({w}x{h})")
    if w * h > limits.max_pixels:
        raise ImageRejected(
            f"{name}: too large: {w}x{h} pixels exceeds the {limits.max_pixels / 1e6:g} MP limit"
        )
    if min(w, h) < limits.min_side:
        raise ImageRejected(
            f"{name}: too small: {w}x{h} pixels; the shortest side must be at least "
            f"{limits.min_side} px (quality.min_side)"
        )
    ratio = max(w, h) / min(w, h)
    if limits.max_aspect_ratio is not None and ratio > limits.max_aspect_ratio:
        raise ImageRejected(
            f"{name}: too elongated: {w}x{h} pixels has an aspect ratio of {ratio:.4g}:1, above "
            f"{limits.max_aspect_ratio:g}:1 (quality.max_aspect_ratio)"
        )


def _frames(img: Image.Image, fmt: str, name: str) -> str | None:
    """Refuse animations; note which picture of a multi-picture file is used."""
    if fmt == "MPO":
        n = int(getattr(img, "n_frames", 1))  # from the MP index in the header: cheap
        return f"MPO multi-picture JPEG: the first of {n} images is used" if n > 1 else None
    # is_animated looks at most one frame ahead, unlike n_frames, which walks every frame.
    if not getattr(img, "is_animated", False):
        return None
    if fmt == "TIFF":
        return "multi-page TIFF: the first page is used"
    raise ImageRejected(
        f"{name}: unsupported format: {fmt} (animated); only still images are augmented, "
        "extract the frame you want"
    )


def _orient(img: Image.Image) -> tuple[Image.Image, str | None]:
    """Apply the EXIF orientation; an unreadable EXIF block leaves the image as stored."""
    try:
        return ImageOps.exif_transpose(img), None
    except Exception as exc:  # a malformed EXIF block must not cost the picture
        return img, f"EXIF orientation unreadable ({type(exc).__name__}); used as stored"


def _to_rgb(img: Image.Image, name: str) -> Image.Image:
    mode = img.mode
    if mode == "RGB":
        return img
    try:
        if mode in _ALPHA_MODES or "transparency" in img.info:
            rgba = img.convert("RGBA")
            background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
            return Image.alpha_composite(background, rgba).convert("RGB")
        if mode in _INT_MODES:
            # 16/32-bit greyscale: scale to 8 bit instead of letting convert() clip at 255.
            arr = np.asarray(img, dtype=np.float64)
            peak = 65535.0 if arr.max(initial=0) > 255 else 255.0
            arr8 = np.clip(np.round(arr / peak * 255.0), 0, 255).astype(np.uint8)
            return Image.fromarray(arr8).convert("RGB")
        if mode == "F":
            # float greyscale: [0, 1] data is scaled, anything else clipped to 0..255; NaN/inf is 0.
            arr = np.nan_to_num(np.asarray(img, dtype=np.float64), nan=0.0, posinf=0.0, neginf=0.0)
            scale = 255.0 if arr.size and arr.min() >= 0.0 and arr.max() <= 1.0 else 1.0
            arr8 = np.clip(np.round(arr * scale), 0, 255).astype(np.uint8)
            return Image.fromarray(arr8).convert("RGB")
        return img.convert("RGB")
    except ValueError as exc:
        raise ImageRejected(f"{name}: unsupported pixel mode {mode}: {exc}") from None


# --- naming what Pillow may not parse ------------------------------------------------------------

_MAGIC: tuple[tuple[bytes, int, str], ...] = (
    (b"\x89PNG\r\n\x1a\n", 0, "PNG"),
    (b"\xff\xd8\xff", 0, "JPEG"),
    (b"GIF87a", 0, "GIF"),
    (b"GIF89a", 0, "GIF"),
    (b"II*\x00", 0, "TIFF"),
    (b"MM\x00*", 0, "TIFF"),
    (b"II+\x00", 0, "TIFF"),
    (b"MM\x00+", 0, "TIFF"),
)
_OTHER_IMAGES: tuple[tuple[bytes, int, str], ...] = (
    (b"\x00\x00\x01\x00", 0, "ICO"),
    (b"\x00\x00\x02\x00", 0, "CUR"),
    (b"8BPS", 0, "PSD"),
    (b"\x00\x00\x00\x0cjP  \r\n\x87\n", 0, "JPEG 2000"),
    (b"\xff\x4f\xff\x51", 0, "JPEG 2000"),
    (b"\x00\x00\x00\x0cJXL \r\n\x87\n", 0, "JPEG XL"),
    (b"\xff\x0a", 0, "JPEG XL"),
    (b"qoif", 0, "QOI"),
    (b"icns", 0, "ICNS"),
    (b"DDS ", 0, "DDS"),
    (b"\x76\x2f\x31\x01", 0, "OpenEXR"),
    (b"#?RADIANCE", 0, "Radiance HDR"),
    (b"\x0a\x05\x01\x08", 0, "PCX"),
)
_NOT_IMAGES: tuple[tuple[bytes, int, str], ...] = (
    (b"%PDF", 0, "a PDF document"),
    (b"PAR1", 0, "a Parquet file (Parquet inputs are read by their .parquet name)"),
    (b"PK\x03\x04", 0, "a ZIP archive"),
    (b"\x1f\x8b", 0, "a gzip file"),
    (b"7z\xbc\xaf\x27\x1c", 0, "a 7z archive"),
    (b"Rar!", 0, "a RAR archive"),
    (b"ustar", 257, "a tar archive"),
    (b"\x7fELF", 0, "an executable"),
    (b"MZ", 0, "a Windows executable"),
    (b"SQLite format 3\x00", 0, "an SQLite database"),
    (b"\x93NUMPY", 0, "a NumPy array (.npy)"),
    (b"ID3", 0, "an MP3 audio file"),
    (b"OggS", 0, "an Ogg media file"),
    (b"\x1a\x45\xdf\xa3", 0, "a Matroska/WebM video"),
)
_FTYP_BRANDS = {
    b"heic": "unsupported format: HEIC",
    b"heix": "unsupported format: HEIC",
    b"heim": "unsupported format: HEIC",
    b"heis": "unsupported format: HEIC",
    b"hevc": "unsupported format: HEIC (sequence)",
    b"mif1": "unsupported format: HEIF",
    b"msf1": "unsupported format: HEIF (sequence)",
    b"avif": "unsupported format: AVIF",
    b"avis": "unsupported format: AVIF (sequence)",
}


def sniff_format(data: bytes) -> str | None:
    """The allowed format ``data`` claims by its magic number (``"PNG"``, ...), else None."""
    head = bytes(data[:16])
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WEBP"
    if head[:2] == b"BM" and head[6:10] == b"\0\0\0\0":  # the reserved field is zero
        return "BMP"
    for magic, offset, kind in _MAGIC:
        if head[offset : offset + len(magic)] == magic:
            return kind
    return None


def _unidentified(data: bytes) -> str:
    """Why no allowed plugin could open ``data``: named from its first bytes, never parsed."""
    claimed = sniff_format(data)
    if claimed is not None:
        return f"corrupt {claimed}: it starts like a {claimed} file but its header cannot be read"
    head = bytes(data[:512])
    if head[4:8] == b"ftyp":
        brand = head[8:12]
        if brand in _FTYP_BRANDS:
            return _FTYP_BRANDS[brand]
        return f"not an image: an ISO media file (brand {brand.decode('latin-1')!r}), e.g. a video"
    if head[:4] == b"RIFF":
        return f"not an image: a RIFF file of type {head[8:12].decode('latin-1')!r} (not WEBP)"
    for magic, offset, kind in _OTHER_IMAGES:
        if head[offset : offset + len(magic)] == magic:
            return f"unsupported format: {kind}"
    if len(head) > 2 and head[:1] == b"P" and head[1:2] in b"123456" and head[2:3].isspace():
        return "unsupported format: PNM (PBM/PGM/PPM)"
    for magic, offset, what in _NOT_IMAGES:
        if head[offset : offset + len(magic)] == magic:
            return f"not an image: {what}"
    text = head.lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    if text.startswith(b"<svg") or (text.startswith(b"<?xml") and b"<svg" in head.lower()):
        return "unsupported format: SVG (vector graphics; rasterise it first)"
    if text.startswith((b"<!doctype html", b"<html")):
        return "not an image: an HTML page"
    try:
        decoded = head.decode("utf-8")
    except UnicodeDecodeError:
        decoded = None
    if decoded is not None and all(c.isprintable() or c in "\t\r\n" for c in decoded):
        return "not an image: text"
    return f"not an image: unrecognised content (starts with {head[:8].hex(' ')})"


# --- encoding and tensors --------------------------------------------------------------------------


def encode_png(img: Image.Image) -> bytes:
    """Encode as PNG with no metadata, so equal pixels always give equal bytes.

    8-bit grey, RGB and their alpha variants go through the fast encoder (models/png.py); other
    modes (palette, 16-bit, CMYK...) through Pillow."""
    if img.mode in _FAST_PNG_MODES:
        return encode_png_array(np.asarray(img))
    # A fresh image drops .info (ICC profile, EXIF, text), which PNG save would otherwise copy;
    # a palette and its transparency are pixels, not metadata, and come along.
    clean = Image.frombytes(img.mode, img.size, img.tobytes())
    if img.mode in ("P", "PA") and img.palette is not None:
        clean.putpalette(img.getpalette() or [])
        if "transparency" in img.info:
            clean.info["transparency"] = img.info["transparency"]
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
    and the quality gate, not an exception, decides. On an accelerator the arithmetic runs there
    and only the uint8 pixels are copied to the host (a quarter of the float bytes, no host CPU);
    a CPU tensor goes through :func:`chw_to_uint8`, image by image. Both give the same bytes.
    """
    if x.device.type != "cpu":
        return _tensor_to_uint8_on_device(x)
    pairs = [chw_to_uint8(img) for img in host_float_images(x)]
    arr = np.stack([a for a, _ in pairs]) if pairs else np.empty((0, *x.shape[2:], 3), np.uint8)
    return arr, [bad for _, bad in pairs]


def host_float_images(x: torch.Tensor) -> list[np.ndarray]:
    """The (3, H, W) float32 numpy images of a CPU batch, without copying float32 storage."""
    import torch

    return list(x.detach().to(torch.float32).numpy())


def chw_to_uint8(chw: np.ndarray) -> tuple[np.ndarray, bool]:
    """One (3, H, W) float image in [-1, 1] -> uint8 (H, W, 3), and whether it had NaN/inf.

    The same bytes as the tensor path: round((x + 1) * 127.5) in float32, halves to even, after
    NaN -> 0 and ±inf -> ±1. numpy's loops run ~4x faster than torch's CPU kernels on one thread
    (fewer passes, no 25 MB temporaries per batch) and release the GIL, so encode threads convert
    images in parallel.
    """
    bad = not bool(np.isfinite(chw).all())
    if bad:
        chw = np.nan_to_num(chw, nan=0.0, posinf=1.0, neginf=-1.0)
    # the first pass reads the planes as (H, W, 3) and writes them contiguous: no later transpose
    scaled = np.add(chw.transpose(1, 2, 0), np.float32(1.0), dtype=np.float32, order="C")
    scaled *= np.float32(127.5)
    np.rint(scaled, out=scaled)
    # clipping after scaling equals clamping to [-1, 1] before it: both end at 0 and 255
    np.clip(scaled, 0.0, 255.0, out=scaled)
    return scaled.astype(np.uint8), bad


def _tensor_to_uint8_on_device(x: torch.Tensor) -> tuple[np.ndarray, list[bool]]:
    import torch

    x = x.detach().to(torch.float32)
    finite = torch.isfinite(x).flatten(1).all(dim=1)
    if not bool(finite.all()):
        x = torch.nan_to_num(x, nan=0.0, posinf=1.0, neginf=-1.0)
    scaled = (x + 1.0).mul_(127.5).round_().clamp_(0.0, 255.0).to(torch.uint8)
    arr = scaled.permute(0, 2, 3, 1).contiguous().cpu().numpy()
    return arr, [not bool(f) for f in finite.cpu()]


def tensor_to_pil(x: torch.Tensor) -> tuple[list[Image.Image], list[bool]]:
    """(B, 3, H, W) in [-1, 1] -> RGB images and per-image has-NaN flags."""
    arr, has_nan = tensor_to_uint8(x)
    return [Image.fromarray(a) for a in arr], has_nan
