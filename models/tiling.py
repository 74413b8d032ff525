"""Overlapping, blended tiles so a fixed-size model runs on any image size without seams.

Convolutional models see less context near a tile's edge, so a plain tile grid leaves visible
seams. Each tile here is weighted by a raised-cosine ramp over the overlap (weight falls to almost
zero at an inner tile edge and is 1 in the middle), and the output is the weight-normalised sum.
Image borders are not ramped: only one tile covers them and it has the real border there.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F


def round_up(n: int, multiple: int) -> int:
    return int(math.ceil(n / multiple) * multiple)


def tile_starts(length: int, tile: int, overlap: int) -> list[int]:
    """Start offsets of tiles of size `tile` covering `length`, neighbours overlapping by ≥ `overlap`.

    The last tile is aligned to the end rather than padded, so every tile has real content.
    """
    if length <= tile:
        return [0]
    if overlap >= tile:
        raise ValueError(f"overlap {overlap} must be smaller than the tile {tile}")
    stride = tile - overlap
    n = math.ceil((length - overlap) / stride)
    starts = [i * stride for i in range(n - 1)]
    starts.append(length - tile)
    return sorted(set(starts))


def ramp_window(size: int, overlap: int, ramp_start: bool, ramp_end: bool) -> torch.Tensor:
    """1-D weights: raised-cosine ramps of `overlap` px on the requested sides, 1 elsewhere.

    The ramp never reaches 0 (half-pixel offset) so every covered pixel has positive weight.
    """
    w = torch.ones(size, dtype=torch.float64)
    ramp_len = min(overlap, size // 2)
    if ramp_len > 0:
        i = torch.arange(ramp_len, dtype=torch.float64)
        ramp = 0.5 - 0.5 * torch.cos(math.pi * (i + 0.5) / ramp_len)
        if ramp_start:
            w[:ramp_len] = ramp
        if ramp_end:
            w[size - ramp_len :] = ramp.flip(0)
    return w


def pad_to(x: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Pad (B,C,H,W) at the bottom/right to (height,width) by reflection.

    Reflection keeps image statistics at the border (zeros would read as a dark frame); it needs
    pad < size, so very small images fall back to replicating the edge for the remainder.
    """
    _, _, h, w = x.shape
    while h < height or w < width:
        ph, pw = min(height - h, h - 1), min(width - w, w - 1)
        if ph <= 0 and pw <= 0:
            x = F.pad(x, (0, width - w, 0, height - h), mode="replicate")
        else:
            x = F.pad(x, (0, max(pw, 0), 0, max(ph, 0)), mode="reflect")
        _, _, h, w = x.shape
    return x


def tiled_apply(
    x: torch.Tensor,
    fn: Callable[[torch.Tensor], torch.Tensor],
    tile: int,
    overlap: int,
    multiple: int = 1,
    max_batch: int = 16,
) -> torch.Tensor:
    """Apply `fn` to (B,C,H,W) `x` in overlapping tiles and blend them; returns (B,C_out,H,W).

    `fn` maps (N,C,h,w) to (N,C_out,h,w) where h,w are multiples of `multiple` (the UNet's
    down-sampling factor). An image smaller than `tile` is reflection-padded up to the next
    multiple and processed whole. Tiles of one image are batched `max_batch` at a time and images
    are never mixed in a batch, so an image's result does not depend on what else is in `x`.
    """
    if tile % multiple:
        raise ValueError(f"tile {tile} must be a multiple of {multiple}")
    b, _, h, w = x.shape
    th = tile if h >= tile else round_up(h, multiple)
    tw = tile if w >= tile else round_up(w, multiple)
    xp = pad_to(x, max(h, th), max(w, tw))
    hp, wp = xp.shape[-2:]
    ys, xs = tile_starts(hp, th, overlap), tile_starts(wp, tw, overlap)
    boxes = [(y, xx) for y in ys for xx in xs]
    weights = {}
    for y, xx in boxes:
        wy = ramp_window(th, overlap, y > 0, y + th < hp)
        wx = ramp_window(tw, overlap, xx > 0, xx + tw < wp)
        weights[(y, xx)] = (wy[:, None] * wx[None, :]).to(torch.float32)
    outs = []
    for i in range(b):
        acc = None
        wsum = torch.zeros(hp, wp, dtype=torch.float32, device=x.device)
        for k in range(0, len(boxes), max_batch):
            chunk = boxes[k : k + max_batch]
            batch = torch.stack([xp[i, :, y : y + th, xx : xx + tw] for y, xx in chunk])
            res = fn(batch)
            if acc is None:
                acc = torch.zeros(res.shape[1], hp, wp, dtype=torch.float32, device=x.device)
            for (y, xx), r in zip(chunk, res, strict=True):
                wt = weights[(y, xx)].to(x.device)
                acc[:, y : y + th, xx : xx + tw] += r.float() * wt
                wsum[y : y + th, xx : xx + tw] += wt
        if acc is None:  # only when there are no tiles, i.e. an empty image
            raise ValueError(f"cannot tile an image of {h}x{w} pixels")
        outs.append((acc / wsum)[:, :h, :w])
    return torch.stack(outs).to(x.dtype)
