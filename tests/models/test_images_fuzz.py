"""Fuzzing the image decoder with generated hostile files.

Whatever the bytes, :func:`decode_within` returns an RGB image or raises ImageRejected with a
reason, in bounded time: never another exception, never a hang. The files are real photos
(scikit-image's) saved in every allowed format and in the multi-picture ones, then truncated at
every offset, bit-flipped, given huge declared sizes, and renamed. The default run takes well under
a minute; ``-m slow`` runs a larger variant.
"""

from __future__ import annotations

import io
import random
import struct
import time
import zlib
from collections import Counter
from collections.abc import Iterator

import numpy as np
import pytest
from PIL import Image

from augflow.models.images import (
    Decoded,
    DecodeLimits,
    ImageRejected,
    decode_within,
)

LIMITS = DecodeLimits(min_side=4, max_aspect_ratio=10.0)
#: Wall time one call may take here. The decoder's own deadline is 30 s; small files take
#: milliseconds, so anything near this bound is a hang in the making.
PER_FILE_S = 5.0


def _photo(size: int, seed: int = 0) -> Image.Image:
    from skimage import data

    img = [data.astronaut(), data.chelsea(), data.coffee()][seed % 3]
    crop = np.ascontiguousarray(img[50:250, 100:300])  # 200x200 of every one of the three
    return Image.fromarray(crop).resize((size, size), Image.Resampling.BICUBIC)


def _save(img: Image.Image, fmt: str, **kw: object) -> bytes:
    buf = io.BytesIO()
    # a copy: Pillow keeps a save's encoder settings on the image, and they leak into the next
    img.copy().save(buf, format=fmt, **kw)
    return buf.getvalue()


def corpus(size: int) -> dict[str, bytes]:
    """Real files: every allowed format, their multi-picture forms, odd modes and EXIF."""
    a, b, c = _photo(size, 0), _photo(size, 1), _photo(size, 2)
    exif = Image.Exif()
    exif[0x0112] = 6
    return {
        "png": _save(a, "PNG"),
        "png-16bit-grey": _save(
            Image.fromarray(np.asarray(a.convert("L"), dtype=np.uint16) * 257), "PNG"
        ),
        "png-palette-transparent": _save(a.convert("P"), "PNG", transparency=0),
        "jpeg": _save(a, "JPEG", quality=85),
        "jpeg-progressive-exif": _save(b, "JPEG", progressive=True, exif=exif.tobytes()),
        "jpeg-cmyk": _save(a.convert("CMYK"), "JPEG"),
        "webp": _save(a, "WEBP", quality=80),
        "webp-lossless-alpha": _save(a.convert("RGBA"), "WEBP", lossless=True),
        "tiff-deflate": _save(a, "TIFF", compression="tiff_adobe_deflate"),
        "tiff-float": _save(Image.fromarray(np.asarray(a.convert("L"), np.float32) / 255), "TIFF"),
        "bmp": _save(a, "BMP"),
        "bmp-1bit": _save(a.convert("1"), "BMP"),
        "gif": _save(a, "GIF"),
        "gif-animated": _save(a, "GIF", save_all=True, append_images=[b, c]),
        "apng": _save(a, "PNG", save_all=True, append_images=[b, c]),
        "webp-animated": _save(a, "WEBP", save_all=True, append_images=[b, c]),
        "tiff-multipage": _save(a, "TIFF", save_all=True, append_images=[b, c]),
        "mpo": _save(a, "MPO", save_all=True, append_images=[b, c]),
    }


def _decode(data: bytes, name: str) -> Decoded | ImageRejected:
    start = time.perf_counter()
    try:
        out: Decoded | ImageRejected = decode_within(data, name, LIMITS)
    except ImageRejected as exc:
        out = exc
    # anything else propagates and fails the test: that is the point
    elapsed = time.perf_counter() - start
    assert elapsed < PER_FILE_S, f"{name} took {elapsed:.1f} s"
    if isinstance(out, Decoded):
        assert out.image.mode == "RGB" and min(out.image.size) >= LIMITS.min_side, name
    else:
        assert out.reason.startswith(f"{name}: ") and len(out.reason) > len(name) + 5
    return out


def _truncations(data: bytes, stride: int) -> Iterator[bytes]:
    for cut in range(0, len(data), stride):
        yield data[:cut]


def _flips(data: bytes, n: int, rng: random.Random) -> Iterator[bytes]:
    for _ in range(n):
        buf = bytearray(data)
        for _ in range(rng.randint(1, 4)):
            i = rng.randrange(len(buf))
            buf[i] = rng.choice((buf[i] ^ (1 << rng.randrange(8)), 0x00, 0xFF, rng.randrange(256)))
        yield bytes(buf)


def _fuzz(size: int, stride: int, flips: int) -> Counter[str]:
    rng = random.Random(1234)
    outcomes: Counter[str] = Counter()
    for kind, data in corpus(size).items():
        whole = _decode(data, kind)
        outcomes[f"{kind}: whole {'row' if isinstance(whole, Decoded) else 'quarantined'}"] += 1
        for i, cut in enumerate(_truncations(data, stride)):
            r = _decode(cut, f"{kind}[:{i * stride}]")
            outcomes["truncated: row" if isinstance(r, Decoded) else "truncated: quarantined"] += 1
        for i, bad in enumerate(_flips(data, flips, rng)):
            r = _decode(bad, f"{kind}~{i}")
            outcomes["flipped: row" if isinstance(r, Decoded) else "flipped: quarantined"] += 1
    return outcomes


def test_truncated_and_flipped_real_files_become_rows_or_quarantine_rows() -> None:
    # every third offset of every file (about 40 KB of files), plus 150 random corruptions of
    # each (every offset: 3x the CI time for no failure the stride-3 run does not also find)
    outcomes = _fuzz(size=48, stride=3, flips=150)
    assert outcomes["truncated: quarantined"] > 10_000
    # the untouched files: still pictures are rows, animations are quarantined by name
    assert outcomes["gif-animated: whole quarantined"] == 1
    assert outcomes["apng: whole quarantined"] == outcomes["webp-animated: whole quarantined"] == 1
    for kind in ("png", "jpeg", "webp", "tiff-deflate", "bmp", "gif", "mpo", "tiff-multipage"):
        assert outcomes[f"{kind}: whole row"] == 1, kind


@pytest.mark.slow
def test_fuzz_larger_files_and_more_corruptions() -> None:
    outcomes = _fuzz(size=256, stride=41, flips=250)
    assert outcomes["flipped: quarantined"] > 160


def test_the_name_is_never_consulted() -> None:
    files = corpus(32)
    for kind, data in files.items():
        outcomes = {
            type(r).__name__ if isinstance(r, ImageRejected) else "row"
            for r in (_decode(data, n) for n in ("x.png", "x.jpg", "x.gif", "x.txt", "x"))
        }
        assert len(outcomes) == 1, kind  # the same verdict under every extension


# --- huge declared sizes: the header claims more pixels than the file could hold ---------------


def _png(w: int, h: int) -> bytes:
    def chunk(kind: bytes, payload: bytes) -> bytes:
        crc = struct.pack(">I", zlib.crc32(kind + payload))
        return struct.pack(">I", len(payload)) + kind + payload + crc

    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    # a real bomb: rows of zeros compress 1000:1, so the file stays small
    idat = zlib.compress(b"\x00" * min(w * 3 + 1, 1 << 20) * 4, 9)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def _bmp(w: int, h: int) -> bytes:
    header = struct.pack("<2sIHHI", b"BM", 54, 0, 0, 54)
    info = struct.pack("<IiiHHIIiiII", 40, w, h, 1, 24, 0, 0, 2835, 2835, 0, 0)
    return header + info + b"\x00" * 64


def _gif(w: int, h: int) -> bytes:
    data = bytearray(_save(Image.new("P", (8, 8)), "GIF"))
    data[6:10] = struct.pack("<HH", w, h)  # logical screen
    i = data.index(b",")  # image descriptor
    data[i + 5 : i + 9] = struct.pack("<HH", w, h)
    return bytes(data)


def _jpeg(w: int, h: int) -> bytes:
    data = bytearray(_save(Image.new("RGB", (8, 8)), "JPEG"))
    i = data.index(b"\xff\xc0")  # start of frame: length(2) precision(1) height(2) width(2)
    data[i + 5 : i + 9] = struct.pack(">HH", h, w)
    return bytes(data)


def _tiff(w: int, h: int) -> bytes:
    img = Image.new("L", (8, 8))
    data = bytearray(_save(img, "TIFF"))
    (offset,) = struct.unpack("<I", data[4:8])
    (count,) = struct.unpack("<H", data[offset : offset + 2])
    for k in range(count):
        e = offset + 2 + 12 * k
        tag, _typ = struct.unpack("<HH", data[e : e + 4])
        if tag in (256, 257):  # ImageWidth, ImageLength
            value = w if tag == 256 else h
            data[e + 2 : e + 12] = struct.pack("<HII", 4, 1, value)  # as LONG
    return bytes(data)


def _webp(w: int, h: int) -> bytes:
    # VP8L lossless header: 14-bit width-1 and height-1
    bits = (w - 1) | ((h - 1) << 14)
    vp8l = b"\x2f" + struct.pack("<I", bits) + b"\x00" * 16
    body = b"WEBP" + b"VP8L" + struct.pack("<I", len(vp8l)) + vp8l
    return b"RIFF" + struct.pack("<I", len(body)) + body


@pytest.mark.parametrize(
    ("make", "w", "h"),
    [
        # between our 64 MP limit and Pillow's own (179 MP): refused by augflow's header check
        (_png, 9_000, 9_000),
        (_jpeg, 10_000, 10_000),
        (_tiff, 12_000, 12_000),
        (_bmp, 8_000, 9_000),
        # beyond Pillow's: refused while Pillow reads the header
        (_png, 20_000, 20_000),
        (_png, 1_000_000, 1_000_000),
        (_png, 2**31 - 1, 1),
        (_bmp, 30_000, 30_000),
        (_bmp, 1, -(2**31) + 1),
        (_gif, 65_535, 65_535),
        (_jpeg, 65_500, 65_500),
        (_tiff, 100_000, 100_000),
        (_webp, 16_384, 16_384),
    ],
)
def test_huge_declared_sizes_are_refused_before_decoding(make, w: int, h: int) -> None:
    data = make(w, h)
    assert len(data) < 2_000_000
    result = _decode(data, "bomb")
    assert isinstance(result, ImageRejected)
    assert "too large" in result.reason and "64 MP" in result.reason, result.reason
