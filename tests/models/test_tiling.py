"""Tiling: exact on identity and per-pixel ops, no seams on a neighbourhood op, any size."""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F

from augflow.models.tiling import pad_to, ramp_window, tile_starts, tiled_apply


@pytest.mark.parametrize(
    "length,tile,overlap", [(64, 64, 16), (65, 64, 16), (200, 64, 16), (37, 32, 8)]
)
def test_tile_starts_cover_with_overlap(length: int, tile: int, overlap: int) -> None:
    starts = tile_starts(length, tile, overlap)
    assert starts[0] == 0 and starts[-1] + tile == length
    assert all(b - a <= tile - overlap for a, b in itertools.pairwise(starts))


def test_ramp_window_positive_and_flat_in_the_middle() -> None:
    w = ramp_window(64, 16, True, True)
    assert (w > 0).all() and (w[16:48] == 1).all() and w[0] < 0.01
    assert (ramp_window(64, 16, False, False) == 1).all()


@pytest.mark.parametrize("h,w", [(37, 29), (200, 150), (64, 64), (5, 130), (1, 1)])
def test_identity_is_reproduced(h: int, w: int) -> None:
    x = torch.rand(2, 3, h, w)
    y = tiled_apply(x, lambda t: t, tile=64, overlap=16, multiple=4)
    assert y.shape == x.shape
    torch.testing.assert_close(y, x, atol=1e-6, rtol=0)


def test_per_pixel_op_matches_whole_image_run() -> None:
    # A per-pixel op gives identical results however it is tiled, so any difference is a seam.
    x = torch.rand(1, 3, 257, 190)
    fn = lambda t: torch.tanh(3 * t) * 0.5  # noqa: E731
    torch.testing.assert_close(tiled_apply(x, fn, 64, 16), fn(x), atol=1e-6, rtol=0)


def test_channel_changing_fn() -> None:
    x = torch.rand(1, 6, 70, 90)
    y = tiled_apply(x, lambda t: t[:, :3] + t[:, 3:], 32, 8, multiple=4)
    torch.testing.assert_close(y, x[:, :3] + x[:, 3:], atol=1e-6, rtol=0)


def test_neighbourhood_op_has_no_seams() -> None:
    # A 5×5 blur sees reflected context at tile edges; the blended result must stay close to the
    # whole-image blur everywhere, in particular along the tile boundaries.
    torch.manual_seed(0)
    x = F.avg_pool2d(torch.rand(1, 3, 300, 300), 3, 1, 1)  # photo-like local correlation

    def blur(t: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(F.pad(t, (2, 2, 2, 2), mode="reflect"), 5, 1)

    whole, tiled = blur(x), tiled_apply(x, blur, 64, 16)
    err = (whole - tiled).abs()
    assert err.max() < 0.03
    # A hard tile grid (no overlap) shows a clear seam: the blend must be much better.
    hard = tiled_apply(x, blur, 64, 0)
    assert err.mean() < 0.25 * (whole - hard).abs().mean()


def test_pad_to_small_images() -> None:
    x = torch.rand(1, 3, 2, 3)
    assert pad_to(x, 8, 8).shape == (1, 3, 8, 8)
