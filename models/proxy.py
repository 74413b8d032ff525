"""The proxy classifier: does a labelled synthetic set help a small training job?

One tiny CNN on small grey images, trained the same way in every arm: the same number of gradient
steps and the same batch size, so arms differ only in what the batches hold. ``share`` of each
batch is drawn from the synthetic set, the rest from the real labelled images (both uniformly,
with replacement). With ``classical`` every image of a batch (real or synthetic) goes through a
random affine transform plus pixel noise first. The seed fixes the initial weights, the batch
draws and the augmentation noise, so two arms with the same seed start from the same network and
their per-seed difference (a paired lift) cancels what they share.

Used by the quality gate and ``augflow evaluate --proxy`` (:mod:`augflow.tasks.proxy`) and by the
usefulness benchmark (bench/usefulness.py, docs/usefulness.md).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from scipy import stats
from torch import nn


@dataclass(frozen=True)
class TrainConfig:
    steps: int = 300
    batch: int = 64
    lr: float = 3e-3
    weight_decay: float = 5e-4


@dataclass(frozen=True)
class Classical:
    """Standard digit-style augmentation: small rotations and shifts, a little scale, noise."""

    max_degrees: float = 15.0
    max_shift: float = 2.0  # pixels at 16×16
    max_scale: float = 0.1
    noise_std: float = 0.05  # on the 0–1 scale


def tiny_cnn(num_classes: int = 10, side: int = 16) -> nn.Module:
    """Two conv blocks and a linear layer (≈ 10 k weights at 16×16, 10 classes)."""
    if side % 4:
        raise ValueError(f"side must be a multiple of 4 (two 2× poolings), got {side}")
    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(32 * (side // 4) ** 2, num_classes),
    )


def to_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 (N, S, S) → float (N, 1, S, S) centred around 0."""
    return torch.from_numpy(images.astype(np.float32) / 255.0 - 0.5)[:, None]


def classical_augment(x: torch.Tensor, aug: Classical, gen: torch.Generator) -> torch.Tensor:
    n, _, h, _ = x.shape
    u = torch.rand(n, 4, generator=gen) * 2 - 1
    angle = u[:, 0] * math.radians(aug.max_degrees)
    scale = 1 + u[:, 1] * aug.max_scale
    shift = u[:, 2:] * (2 * aug.max_shift / h)  # affine_grid works in [-1, 1] units
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack(
        [torch.stack([cos, -sin, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)], 1
    )
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    # background is -0.5 (black): pad with it, not with zeros (mid grey after centring)
    out = F.grid_sample(x + 0.5, grid, align_corners=False, padding_mode="zeros") - 0.5
    out = out + torch.randn(out.shape, generator=gen) * aug.noise_std
    return out.clamp(-0.5, 0.5)


def train_classifier(
    real_x: np.ndarray,
    real_y: np.ndarray,
    seed: int,
    *,
    synth_x: np.ndarray | None = None,
    synth_y: np.ndarray | None = None,
    share: float = 0.0,
    classical: Classical | None = None,
    cfg: TrainConfig | None = None,
    num_classes: int = 10,
) -> nn.Module:
    """Train the CNN on uint8 (N, S, S) images; ``share`` of each batch synthetic (0 if none)."""
    cfg = cfg or TrainConfig()
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    model = tiny_cnn(num_classes, real_x.shape[-1])
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    rx, ry = to_tensor(real_x), torch.from_numpy(np.asarray(real_y, dtype=np.int64))
    n_syn = 0
    sx = sy = None
    if synth_x is not None and synth_y is not None and len(synth_x) > 0 and share > 0:
        n_syn = round(share * cfg.batch)
        sx, sy = to_tensor(synth_x), torch.from_numpy(np.asarray(synth_y, dtype=np.int64))
    model.train()
    for step in range(cfg.steps):
        lr = cfg.lr * 0.5 * (1 + math.cos(math.pi * step / cfg.steps))
        for g in opt.param_groups:
            g["lr"] = lr
        ri = torch.randint(0, len(rx), (cfg.batch - n_syn,), generator=gen)
        xb, yb = rx[ri], ry[ri]
        if sx is not None and sy is not None and n_syn:
            si = torch.randint(0, len(sx), (n_syn,), generator=gen)
            xb, yb = torch.cat([xb, sx[si]]), torch.cat([yb, sy[si]])
        if classical is not None:
            xb = classical_augment(xb, classical, gen)
        loss = F.cross_entropy(model(xb), yb)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return model.eval()


@torch.no_grad()
def accuracy(model: nn.Module, images: np.ndarray, labels: np.ndarray) -> float:
    pred = model(to_tensor(images)).argmax(dim=1).numpy()
    return float((pred == labels).mean())


# --- summaries over seeds --------------------------------------------------------------------


def mean_ci(values: Sequence[float]) -> dict[str, float | list[float]]:
    """``{"mean": m, "ci95": [lo, hi]}`` (Student's t over seeds); one value: that value."""
    n = len(values)
    if n == 0:
        raise ValueError("no values to summarise")
    m = sum(values) / n
    if n == 1:
        return {"mean": m, "ci95": [m, m]}
    sd = math.sqrt(sum((v - m) ** 2 for v in values) / (n - 1))
    half = float(stats.t.ppf(0.975, n - 1)) * sd / math.sqrt(n)
    return {"mean": m, "ci95": [m - half, m + half]}


def paired_lift(a: Sequence[float], b: Sequence[float]) -> dict[str, float | list[float]]:
    """Mean and 95% CI of ``a - b`` over seeds (same seeds, same order)."""
    if len(a) != len(b):
        raise ValueError(f"{len(a)} vs {len(b)} seeds: lifts need the same seeds on both sides")
    return mean_ci([x - y for x, y in zip(a, b, strict=True)])
