"""Safe decoding and deterministic encoding."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
import torch
from PIL import Image

from augflow.models import images
from augflow.models.images import (
    DecodeLimits,
    ImageRejected,
    chw_to_uint8,
    decode_image,
    decode_within,
    encode_png,
    host_float_images,
    open_image,
    pil_to_tensor,
    tensor_to_pil,
    tensor_to_uint8,
)
from augflow.schemas import errors


def _bytes(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def _noise(w: int = 21, h: int = 13, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP", "BMP", "TIFF", "GIF"])
def test_allowed_formats_decode_to_rgb(fmt: str) -> None:
    img = decode_image(_bytes(_noise(), fmt), "x")
    assert img.mode == "RGB"
    assert img.size == (21, 13)


def test_image_rejected_lives_with_every_other_error() -> None:
    assert ImageRejected is errors.ImageRejected
    assert issubclass(ImageRejected, errors.AugflowError)


def test_png_decodes_exactly() -> None:
    src = _noise()
    assert np.array_equal(np.asarray(decode_image(_bytes(src, "PNG"), "x")), np.asarray(src))


def test_transparency_is_composited_over_white() -> None:
    rgba = Image.new("RGBA", (4, 4), (0, 0, 0, 0))
    img = decode_image(_bytes(rgba, "PNG"), "x")
    assert img.mode == "RGB"
    assert np.asarray(img).min() == 255


def _frames(n: int = 3) -> list[Image.Image]:
    return [_noise(seed=i) for i in range(n)]


@pytest.mark.parametrize("fmt", ["GIF", "PNG", "WEBP"])
def test_animations_are_refused_by_name(fmt: str) -> None:
    first, *rest = _frames()
    data = _bytes(first, fmt, save_all=True, append_images=rest)
    with pytest.raises(ImageRejected) as exc:
        decode_image(data, "cat.bin")
    assert f"cat.bin: unsupported format: {fmt} (animated)" in exc.value.reason


def test_mpo_gives_its_first_image_and_says_so() -> None:
    first, *rest = _frames()
    data = _bytes(first, "MPO", save_all=True, append_images=rest)
    decoded = open_image(data, "phone.jpg")
    assert decoded.note == "MPO multi-picture JPEG: the first of 3 images is used"
    alone = open_image(_bytes(first, "JPEG"), "one.jpg")
    assert np.array_equal(np.asarray(decoded.image), np.asarray(alone.image))
    assert alone.note is None


def test_a_multi_page_tiff_gives_its_first_page_and_says_so() -> None:
    first, *rest = _frames()
    decoded = open_image(_bytes(first, "TIFF", save_all=True, append_images=rest), "scan.tif")
    assert decoded.note == "multi-page TIFF: the first page is used"
    assert np.array_equal(np.asarray(decoded.image), np.asarray(first))


@pytest.mark.parametrize(
    ("data", "words"),
    [
        (b"definitely not pixels", "not an image: text"),
        (b"", "not an image: empty file"),
        (b"%PDF-1.7\n...", "not an image: a PDF document"),
        (b"PAR1\x15\x04", "not an image: a Parquet file"),
        (b"PK\x03\x04zip", "not an image: a ZIP archive"),
        (b"\x00\x00\x00\x1cftypheic\x00\x00\x00\x00", "unsupported format: HEIC"),
        (b"\x00\x00\x00\x1cftypavif\x00\x00\x00\x00", "unsupported format: AVIF"),
        (b"\x00\x00\x00\x18ftypmp42\x00\x00\x00\x00", "not an image: an ISO media file"),
        (b'<?xml version="1.0"?><svg xmlns="x"/>', "unsupported format: SVG"),
        (b"8BPS\x00\x01\x00\x00", "unsupported format: PSD"),
        (b"P6\n4 4\n255\n" + b"\x00" * 48, "unsupported format: PNM"),
        (b"\x89PNG\r\n\x1a\n\x00\x00", "corrupt PNG"),
        (b"\xff\xd8\xff\xe0\x00", "corrupt JPEG"),
        (bytes(range(256)) * 4, "not an image: unrecognised content (starts with 00 01 02"),
    ],
)
def test_what_is_not_an_allowed_image_is_named_without_parsing(data: bytes, words: str) -> None:
    with pytest.raises(ImageRejected) as exc:
        decode_image(data, "f")
    assert words in exc.value.reason


@pytest.mark.parametrize("fmt", ["AVIF", "ICO", "JPEG2000", "QOI", "PDF"])
def test_formats_pillow_could_read_stay_outside_the_allowlist(fmt: str) -> None:
    name = {"JPEG2000": "JPEG 2000", "PDF": "a PDF document"}.get(fmt, fmt)
    with pytest.raises(ImageRejected, match=name):
        decode_image(_bytes(_noise(), fmt), "x")


def test_truncated_file_is_corrupt() -> None:
    data = _bytes(_noise(64, 64), "PNG")
    with pytest.raises(ImageRejected, match="corrupt PNG"):
        decode_image(data[: len(data) // 2], "half.png")


def _mode(img: Image.Image, fmt: str = "PNG", **kw: object) -> np.ndarray:
    return np.asarray(open_image(_bytes(img, fmt, **kw), "m").image)


def test_odd_modes_become_the_rgb_a_viewer_shows() -> None:
    grey16 = Image.fromarray(np.array([[0, 65535], [32768, 1000]], dtype=np.uint16))
    assert _mode(grey16)[:, :, 0].tolist() == [[0, 255], [128, 4]]  # scaled, not clipped
    float01 = Image.fromarray(np.array([[0.0, 1.0], [0.5, np.nan]], dtype=np.float32))
    assert _mode(float01, "TIFF")[:, :, 0].tolist() == [[0, 255], [128, 0]]
    cmyk = Image.new("CMYK", (4, 4), (0, 255, 255, 0))  # pure red in CMYK
    assert _mode(cmyk, "TIFF")[0, 0].tolist() == [255, 0, 0]
    pal = Image.new("P", (4, 4), 1)
    pal.putpalette([0, 0, 0, 10, 20, 30] + [0] * 762)
    assert _mode(pal, transparency=1)[0, 0].tolist() == [255, 255, 255]  # transparent -> white
    la = Image.new("LA", (4, 4), (0, 0))
    assert _mode(la)[0, 0].tolist() == [255, 255, 255]
    one_bit = Image.new("1", (4, 4), 1)
    assert _mode(one_bit)[0, 0].tolist() == [255, 255, 255]
    assert _mode(Image.new("LAB", (4, 4)), "TIFF").shape == (4, 4, 3)


@pytest.mark.parametrize(
    ("orientation", "size"), [(1, (30, 20)), (3, (30, 20)), (6, (20, 30)), (8, (20, 30))]
)
def test_exif_orientation_is_applied(orientation: int, size: tuple[int, int]) -> None:
    exif = Image.Exif()
    exif[0x0112] = orientation
    img = Image.new("RGB", (30, 20), (200, 10, 10))
    assert open_image(_bytes(img, "JPEG", exif=exif.tobytes()), "x").image.size == size


@pytest.mark.parametrize("orientation", [0, 9, 65535])
def test_invalid_exif_orientations_leave_the_image_as_stored(orientation: int) -> None:
    exif = Image.Exif()
    exif[0x0112] = orientation
    img = Image.new("RGB", (30, 20))
    assert open_image(_bytes(img, "JPEG", exif=exif.tobytes()), "x").image.size == (30, 20)


def test_a_corrupt_exif_block_does_not_cost_the_picture() -> None:
    img = Image.new("RGB", (30, 20), (0, 90, 0))
    data = _bytes(img, "JPEG", exif=b"Exif\x00\x00II*\x00\xff\xff\xff\x7f")
    assert open_image(data, "x").image.size == (30, 20)


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


def test_degenerate_sizes_are_refused_from_the_header() -> None:
    limits = DecodeLimits(min_side=16, max_aspect_ratio=10.0)
    with pytest.raises(ImageRejected, match=r"too small: 1x1 pixels.*at least 16 px"):
        open_image(_png_header_only(1, 1), "dot.png", limits)
    with pytest.raises(ImageRejected, match=r"too elongated: 16x4000 pixels.*250:1.*10:1"):
        open_image(_png_header_only(16, 4000), "strip.png", limits)
    # the sizes come from the header: the pixel data of these files was never there
    assert open_image(_bytes(_noise(16, 160), "PNG"), "ok.png", limits).image.size == (16, 160)
    # masks and previews (decode_image) take any size
    assert decode_image(_bytes(_noise(1, 1), "PNG"), "mask.png").size == (1, 1)


def test_a_file_over_the_byte_limit_is_refused_unread() -> None:
    with pytest.raises(ImageRejected, match=r"exceeds the 0\.0625 MiB file limit"):
        open_image(_bytes(_noise(256, 256), "PNG"), "x", DecodeLimits(max_bytes=65536))


def test_a_decode_past_its_deadline_is_abandoned() -> None:
    big = _bytes(_noise(2000, 2000), "PNG")  # ~12 MB of pixels, far more than a microsecond
    with pytest.raises(ImageRejected, match=r"decoding took longer than 1e-06 s"):
        decode_within(big, "slow.png", DecodeLimits(), timeout_s=1e-6)
    assert decode_within(big, "slow.png", DecodeLimits()).image.size == (2000, 2000)


def test_decoding_leaves_process_wide_warning_filters_alone() -> None:
    """Decoding runs in threads (the actor's two shards, the deadline thread): no code path may
    change the process's warning filters, as warnings.catch_warnings does."""
    import threading
    import warnings

    before = list(warnings.filters)
    data = [
        _png_header_only(9_000, 9_000),
        _png_header_only(100_000, 100_000),
        _bytes(_noise(), "PNG"),
    ]
    errors_seen: list[BaseException] = []

    def work() -> None:
        for d in data * 20:
            try:
                decode_within(d, "t", DecodeLimits())
            except ImageRejected:
                pass
            except BaseException as exc:  # anything else is a bug
                errors_seen.append(exc)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors_seen == [] and warnings.filters == before


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


def _reference_uint8(x: torch.Tensor) -> np.ndarray:
    """The conversion as first written (torch, clamp before scaling): every path must match it."""
    x = x.detach().to("cpu", torch.float32)
    x = torch.nan_to_num(x, nan=0.0, posinf=1.0, neginf=-1.0).clamp(-1.0, 1.0)
    return ((x + 1.0) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).contiguous().numpy()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64])
def test_every_conversion_path_gives_the_same_bytes(dtype: torch.dtype) -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.rand(4, 3, 19, 23, generator=g) * 2.4 - 1.2  # some values out of [-1, 1]
    x[1, 0, 0, 0] = float("nan")
    x[2, 1, 3, 4], x[2, 2, 3, 4] = float("inf"), -float("inf")
    # values that land exactly on .5 after scaling (round half to even must agree)
    k = torch.arange(255, dtype=torch.float32)
    x[3].view(-1)[:255] = (k + 0.5) / 127.5 - 1
    x = x.to(dtype)
    expected = _reference_uint8(x)
    host, flags = tensor_to_uint8(x)
    device, device_flags = images._tensor_to_uint8_on_device(x)  # the accelerator path, on CPU
    per_image = [chw_to_uint8(a) for a in host_float_images(x)]
    assert np.array_equal(host, expected) and np.array_equal(device, expected)
    assert all(np.array_equal(a, e) for (a, _), e in zip(per_image, expected, strict=True))
    assert flags == device_flags == [bad for _, bad in per_image] == [False, True, True, False]
    assert host.flags["C_CONTIGUOUS"] and per_image[0][0].flags["C_CONTIGUOUS"]


def test_an_empty_batch_converts_to_an_empty_array() -> None:
    arr, flags = tensor_to_uint8(torch.zeros(0, 3, 5, 7))
    assert arr.shape == (0, 5, 7, 3) and arr.dtype == np.uint8 and flags == []


@pytest.mark.parametrize("mode", ["L", "LA", "RGB", "RGBA", "P", "I;16", "1"])
def test_encode_png_keeps_every_modes_pixels(mode: str) -> None:
    img = _noise().convert(mode)
    back = Image.open(io.BytesIO(encode_png(img)))
    assert back.mode == mode
    assert np.array_equal(np.asarray(back), np.asarray(img))
    assert np.array_equal(np.asarray(back.convert("RGBA")), np.asarray(img.convert("RGBA")))
