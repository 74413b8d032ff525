"""The training script (models/training/train.py): its schedule, its batches, and that a run
exports a folder the product loads and resumes where it stopped."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from augflow.models.loading import load_pipeline
from augflow.models.training.train import (
    Ema,
    learning_rate,
    random_crops,
    sr3_batch,
    texture,
    train,
)
from augflow.schemas.request import ModelSpec


def test_learning_rate_warms_up_holds_then_decays_to_zero() -> None:
    assert learning_rate(1, 1000, 1e-3) == pytest.approx(1e-5)
    assert learning_rate(100, 1000, 1e-3) == pytest.approx(1e-3)
    # before the decay the schedule does not depend on the total (runs can be lengthened)
    assert learning_rate(500, 1000, 1e-3) == learning_rate(500, 4000, 1e-3)
    assert learning_rate(1000, 1000, 1e-3) == 0.0
    assert 0 < learning_rate(900, 1000, 1e-3) < 1e-3


@pytest.mark.parametrize("kind", ["denoise", "upscale"])
def test_sr3_batches_pair_a_clean_crop_with_its_degraded_condition(kind: str) -> None:
    rng = np.random.default_rng(0)
    photos = [
        np.random.default_rng(i).integers(0, 256, (80, 96, 3), dtype=np.uint8) for i in range(3)
    ]
    x0, cond, sig = sr3_batch(kind, photos, rng, 4, 32)
    assert x0.shape == cond.shape == (4, 3, 32, 32)
    assert x0.min() >= -1 and x0.max() <= 1 and cond.min() >= -1 and cond.max() <= 1
    assert not torch.equal(x0, cond)
    if kind == "denoise":
        assert (sig > 0).all()  # each crop's noise level, for the loss weight and the σ map
    else:
        assert (sig == 0).all()


def test_pick_prefers_detailed_crops() -> None:
    # left half flat grey, right half noise: with pick=1 about half the crops are flat
    img = np.full((64, 128, 3), 128, dtype=np.uint8)
    img[:, 64:] = np.random.default_rng(1).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    flat = sum(texture(c) < 1 for c in random_crops([img], np.random.default_rng(0), 40, 16))
    picky = sum(
        texture(c) < 1 for c in random_crops([img], np.random.default_rng(0), 40, 16, pick=4)
    )
    assert flat >= 8 and picky < flat / 4


def test_ema_moves_towards_the_model() -> None:
    model = torch.nn.Linear(2, 2)
    ema = Ema(model, decay=0.9)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    before = [p.clone() for p in ema.model.parameters()]
    ema.update(model, step=1000)
    for b, e, m in zip(before, ema.model.parameters(), model.parameters(), strict=True):
        assert torch.allclose(e, 0.9 * b + 0.1 * m)


def _args(out: Path, steps: int) -> argparse.Namespace:
    return argparse.Namespace(
        kind="generate", out=str(out), ckpt=str(out.parent / "ckpt.pt"), steps=steps, batch=2,
        patch=32, lr=1e-3, ema=0.9, p_last=0.85, seed=0, threads=1, save_every=1, bf16=False,
        until=None, pick=1,
    )  # fmt: skip


@pytest.mark.slow
def test_a_run_exports_a_loadable_model_and_resumes(tmp_path: Path) -> None:
    out = tmp_path / "faces"
    train(_args(out, 1))
    assert json.loads((out / "train_log.json").read_text())["steps"] == 1
    first = load_pipeline(ModelSpec(id=str(out)), "cpu")
    assert first.pipeline.unet.dtype == torch.float32  # loaded as the product loads on CPU
    train(_args(out, 2))  # picks the checkpoint up at step 1 and does one more
    log = json.loads((out / "train_log.json").read_text())
    assert log["steps"] == 2
    second = load_pipeline(ModelSpec(id=str(out)), "cpu")
    assert second.revision != first.revision  # new weights were exported
    weights = list(out.rglob("*.safetensors"))
    assert weights and not list(out.rglob("*.bin"))
