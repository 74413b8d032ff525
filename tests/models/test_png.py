"""The output PNG encoder: exact for every reader, deterministic, and not much larger than Pillow's."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image
from skimage import data

from augflow.models import png as png_module
from augflow.models.png import PNG_SIGNATURE, encode_png_array


def _chunks(blob: bytes) -> list[tuple[bytes, bytes]]:
    """(type, data) of every chunk, checking each CRC on the way."""
    assert blob[:8] == PNG_SIGNATURE
    out, pos = [], 8
    while pos < len(blob):
        (length,) = struct.unpack(">I", blob[pos : pos + 4])
        kind, body = blob[pos + 4 : pos + 8], blob[pos + 8 : pos + 8 + length]
        (crc,) = struct.unpack(">I", blob[pos + 8 + length : pos + 12 + length])
        assert crc == zlib.crc32(kind + body), kind
        out.append((kind, body))
        pos += 12 + length
    return out


def _decode_with_stdlib(blob: bytes) -> np.ndarray:
    """A second reader, independent of Pillow: the stdlib's zlib and the Up filter undone by a
    running sum down each column (any other filter type fails here)."""
    chunks = dict(_chunks(blob))
    width, height, depth, colour, *_ = struct.unpack(">IIBBBBB", chunks[b"IHDR"])
    channels = {0: 1, 4: 2, 2: 3, 6: 4}[colour]
    assert depth == 8
    rows = np.frombuffer(zlib.decompress(chunks[b"IDAT"]), np.uint8).reshape(height, -1)
    assert set(np.unique(rows[:, 0])) == {2}
    pixels = np.cumsum(rows[:, 1:], axis=0, dtype=np.uint64) % 256
    return pixels.astype(np.uint8).reshape(height, width, channels)


def _noise(shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


@pytest.mark.parametrize(
    ("shape", "mode"),
    [
        ((13, 21), "L"),
        ((13, 21, 1), "L"),
        ((9, 7, 2), "LA"),
        ((17, 31, 3), "RGB"),
        ((5, 3, 4), "RGBA"),
        ((1, 1, 3), "RGB"),
        ((1, 40, 3), "RGB"),
        ((40, 1, 3), "RGB"),
    ],
)
def test_every_reader_gets_the_exact_pixels_back(shape: tuple[int, ...], mode: str) -> None:
    pixels = _noise(shape)
    blob = encode_png_array(pixels)
    with Image.open(io.BytesIO(blob)) as img:
        assert img.mode == mode
        decoded = np.asarray(img)
    assert np.array_equal(decoded.reshape(shape), pixels)
    assert np.array_equal(_decode_with_stdlib(blob).reshape(shape), pixels)


@pytest.mark.parametrize("name", ["astronaut", "coffee", "rocket"])
def test_photos_round_trip_and_stay_close_to_pillows_size(name: str) -> None:
    pixels = np.asarray(Image.fromarray(getattr(data, name)()).convert("RGB"))
    blob = encode_png_array(pixels)
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(blob))), pixels)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG", compress_level=6)
    # measured 1.04-1.12x on photos (docs/benchmarks.md); a weaker deflate level would be ~1.4x
    assert len(blob) <= 1.2 * len(buf.getvalue())
    assert len(blob) < 0.8 * pixels.nbytes  # it does compress


def test_equal_pixels_give_equal_bytes_and_nothing_but_the_pixels() -> None:
    pixels = _noise((32, 48, 3), seed=3)
    blob = encode_png_array(pixels)
    assert blob == encode_png_array(pixels.copy())
    # a strided view of the same pixels (what a tensor's permute gives) encodes the same
    planar = np.ascontiguousarray(pixels.transpose(2, 0, 1))
    assert encode_png_array(planar.transpose(1, 2, 0)) == blob
    assert [kind for kind, _ in _chunks(blob)] == [b"IHDR", b"IDAT", b"IEND"]


@pytest.mark.parametrize(
    ("bad", "words"),
    [
        (np.zeros((4, 4, 3), np.float32), "uint8"),
        (np.zeros((4, 4, 3), np.uint16), "uint8"),
        ([[0, 1], [2, 3]], "uint8"),
        (np.zeros((4, 4, 5), np.uint8), "shape"),
        (np.zeros((2, 4, 4, 3), np.uint8), "shape"),
        (np.zeros((0, 4, 3), np.uint8), "0x4"),
    ],
)
def test_arrays_a_png_cannot_hold_are_refused(bad: object, words: str) -> None:
    with pytest.raises(ValueError, match=words):
        encode_png_array(bad)  # type: ignore[arg-type]


@pytest.mark.parametrize("fault", ["corrupt stream", "other content"])
def test_a_stream_that_does_not_inflate_back_is_never_returned(monkeypatch, fault: str) -> None:
    real = png_module.isal_zlib.compress

    def faulty(raw, level):
        if fault == "other content":  # a valid stream of other bytes
            return real(bytes(raw)[:-1] + b"\x00", level)
        stream = bytearray(real(raw, level))
        stream[2:] = bytes(len(stream) - 2)  # the header survives, the blocks do not
        return bytes(stream)

    monkeypatch.setattr(png_module.isal_zlib, "compress", faulty)
    pixels = _noise((64, 64, 3), seed=5)
    pixels[-1, -1, -1] = 7  # so the last byte really changes
    with pytest.raises(RuntimeError, match="did not inflate back"):
        encode_png_array(pixels)
