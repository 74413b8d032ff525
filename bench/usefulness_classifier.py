"""The proxy classifier: one tiny CNN, trained the same way in every arm.

Every arm gets the same number of gradient steps and the same batch size, so arms differ only in
what the batches hold: ``share`` of each batch is drawn from the synthetic set, the rest from the
real few-shot images (both uniformly, with replacement). With ``classical`` every image of a batch
(real or synthetic) goes through a random affine transform plus pixel noise first. The seed fixes
the initial weights, the batch draws and the augmentation noise, so two arms with the same seed
start from the same network.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class TrainConfig:
    steps: int = 300
    batch: int = 64
    lr: float = 3e-3
    weight_decay: float = 5e-4


@dataclass(frozen=True)
class Classical:
    """Standard digit augmentation: small rotations and shifts, a little scale, pixel noise."""

    max_degrees: float = 15.0
    max_shift: float = 2.0  # pixels at 16×16
    max_scale: float = 0.1
    noise_std: float = 0.05  # on the 0–1 scale


def tiny_cnn() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(32 * 4 * 4, 10),
    )


def to_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 (N,16,16) → float (N,1,16,16) centred around 0."""
    return torch.from_numpy(images.astype(np.float32) / 255.0 - 0.5)[:, None]


def augment(x: torch.Tensor, aug: Classical, gen: torch.Generator) -> torch.Tensor:
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
    cfg: TrainConfig = TrainConfig(),
) -> nn.Module:
    """Train the CNN on the mix; ``share`` of each batch synthetic (0 when there is none)."""
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    model = tiny_cnn()
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    rx, ry = to_tensor(real_x), torch.from_numpy(real_y)
    has_synth = synth_x is not None and len(synth_x) > 0 and share > 0
    n_syn = round(share * cfg.batch) if has_synth else 0
    if has_synth:
        sx, sy = to_tensor(synth_x), torch.from_numpy(synth_y)
    model.train()
    for step in range(cfg.steps):
        lr = cfg.lr * 0.5 * (1 + math.cos(math.pi * step / cfg.steps))
        for g in opt.param_groups:
            g["lr"] = lr
        ri = torch.randint(0, len(rx), (cfg.batch - n_syn,), generator=gen)
        xb, yb = rx[ri], ry[ri]
        if n_syn:
            si = torch.randint(0, len(sx), (n_syn,), generator=gen)
            xb, yb = torch.cat([xb, sx[si]]), torch.cat([yb, sy[si]])
        if classical is not None:
            xb = augment(xb, classical, gen)
        loss = F.cross_entropy(model(xb), yb)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return model.eval()


@torch.no_grad()
def accuracy(model: nn.Module, images: np.ndarray, labels: np.ndarray) -> float:
    pred = model(to_tensor(images)).argmax(dim=1).numpy()
    return float((pred == labels).mean())


@dataclass(frozen=True)
class Job:
    """One training run of the classifier and the set it is scored on (picklable for a pool)."""

    key: tuple
    seed: int
    real_x: np.ndarray
    real_y: np.ndarray
    eval_x: np.ndarray
    eval_y: np.ndarray
    synth_x: np.ndarray | None = None
    synth_y: np.ndarray | None = None
    share: float = 0.0
    classical: Classical | None = None
    cfg: TrainConfig = TrainConfig()


def fit_and_score(job: Job) -> tuple[tuple, float]:
    model = train_classifier(
        job.real_x,
        job.real_y,
        job.seed,
        synth_x=job.synth_x,
        synth_y=job.synth_y,
        share=job.share,
        classical=job.classical,
        cfg=job.cfg,
    )
    return job.key, accuracy(model, job.eval_x, job.eval_y)


def init_worker() -> None:
    # one thread per process: the pool itself is the parallelism, and the box is shared
    torch.set_num_threads(1)
