"""Safe decoding and deterministic encoding."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
import torch
from PIL import Image

from augflow.models.images import (
    ImageRejected,
    decode_image,
    encode_png,
    pil_to_tensor,
    tensor_to_pil,
)


def _bytes(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def _noise(w: int = 21, h: int = 13, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP", "BMP", "TIFF"])
def test_allowed_formats_decode_to_rgb(fmt: str) -> None:
    img = decode_image(_bytes(_noise(), fmt), "x")
    assert img.mode == "RGB"
    assert img.size == (21, 13)


def test_png_decodes_exactly() -> None:
    src = _noise()
    assert np.array_equal(np.asarray(decode_image(_bytes(src, "PNG"), "x")), np.asarray(src))


def test_transparency_is_composited_over_white() -> None:
    rgba = Image.new("RGBA", (4, 4), (0, 0, 0, 0))
    img = decode_image(_bytes(rgba, "PNG"), "x")
    assert img.mode == "RGB"
    assert np.asarray(img).min() == 255


def test_gif_is_refused_with_the_allowlist() -> None:
    with pytest.raises(ImageRejected) as exc:
        decode_image(_bytes(_noise(), "GIF"), "cat.gif")
    assert "cat.gif" in exc.value.reason
    assert "GIF not allowed" in exc.value.reason
    assert "PNG" in exc.value.reason


def test_garbage_is_not_an_image() -> None:
    with pytest.raises(ImageRejected, match="not an image: cannot identify image file"):
        decode_image(b"definitely not pixels", "notes.png")


def test_truncated_file_is_corrupt() -> None:
    data = _bytes(_noise(64, 64), "PNG")
    with pytest.raises(ImageRejected, match="corrupt"):
        decode_image(data[: len(data) // 2], "half.png")


def test_pixel_limit_is_checked() -> None:
    with pytest.raises(
        ImageRejected, match=r"too large: 21x13 pixels exceeds the 0\.0002 MP limit"
    ):
        decode_image(_bytes(_noise(), "PNG"), "x", max_pixels=200)


def _png_header_only(w: int, h: int) -> bytes:
    """A PNG whose header claims w x h pixels, with (almost) no pixel data: a decompression bomb."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b""))
        + chunk(b"IEND", b"")
    )


@pytest.mark.parametrize("side", [9_000, 100_000])  # above our 64 MP; and above Pillow's own limit
def test_bomb_header_is_refused_before_decoding(side: int) -> None:
    with pytest.raises(ImageRejected) as exc:
        decode_image(_png_header_only(side, side), "bomb.png")
    assert "too large" in exc.value.reason
    assert "64 MP" in exc.value.reason


def test_encode_png_is_deterministic_and_drops_metadata() -> None:
    img = _noise()
    plain = encode_png(img)
    assert plain == encode_png(img.copy())
    with_meta = Image.open(io.BytesIO(_bytes(img, "PNG", icc_profile=b"\0" * 64, exif=b"Exif\0\0")))
    with_meta.load()
    assert with_meta.info  # the source really carried metadata
    assert encode_png(with_meta) == plain
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(plain))), np.asarray(img))


def test_tensor_round_trip_is_exact() -> None:
    imgs = [_noise(seed=1), _noise(seed=2)]
    x = pil_to_tensor(imgs)
    assert x.shape == (2, 3, 13, 21)
    assert x.min() >= -1 and x.max() <= 1
    back, nan = tensor_to_pil(x)
    assert nan == [False, False]
    for a, b in zip(back, imgs, strict=True):
        assert np.array_equal(np.asarray(a), np.asarray(b))


def test_nan_tensor_still_converts() -> None:
    x = torch.zeros(2, 3, 4, 4)
    x[1, 0, 0, 0] = float("nan")
    x[1, 1, 0, 0] = float("inf")
    imgs, nan = tensor_to_pil(x)
    assert nan == [False, True]
    assert len(imgs) == 2
