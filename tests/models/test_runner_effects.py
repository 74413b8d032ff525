"""The actor computes the effect metrics (models/effects.py) for every row it produces, next to
the form metrics, from the output and the reference its family used."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from broken_models import make_noop_denoiser
from dummy_models import items_for, make_request, make_tiny_ddpm, photo
from PIL import Image

from augflow.models import effects as E
from augflow.models.runner import AugmentModel
from augflow.schemas.rows import EFFECT_COLUMN_NAMES, METRIC_COLUMNS, ROW_SCHEMA


def test_every_row_carries_every_effect_column(tmp_path: Path) -> None:
    # the metrics dict of a row is what the shard worker writes with ROW_SCHEMA
    assert set(EFFECT_COLUMN_NAMES) <= set(ROW_SCHEMA.names)
    assert set(EFFECT_COLUMN_NAMES).isdisjoint(METRIC_COLUMNS)
    ddpm = make_tiny_ddpm(tmp_path / "ddpm")
    gen = make_request(ddpm, {"kind": "generate", "num_images": 2})
    outs = AugmentModel(gen, "cpu")(items_for(gen, 0), [None, None])
    for out in outs:
        assert out.metrics is not None
        assert all(out.metrics[n] is None for n in EFFECT_COLUMN_NAMES)  # nothing to compare

    i2i = make_request(ddpm, {"kind": "img2img", "strength": 0.5, "variants": 1})
    srcs = [photo(40, 24, seed=k) for k in range(2)]
    outs = AugmentModel(i2i, "cpu")(items_for(i2i, 2), srcs)
    for out in outs:
        assert out.metrics is not None
        assert out.metrics["source_psnr"] is not None and out.metrics["source_ssim"] is not None
        assert out.metrics["noise_in"] is None  # a denoise column


def test_noop_denoiser_rows_show_nothing_removed(tmp_path: Path) -> None:
    model = make_noop_denoiser(tmp_path / "noop")
    req = make_request(model, {"kind": "denoise", "noise_level": 25}, steps=1)
    rng = np.random.default_rng(0)
    clean = np.asarray(photo(64, 64))
    noisy = np.clip(clean + rng.normal(0, 25, clean.shape), 0, 255).astype(np.uint8)

    outs = AugmentModel(req, "cpu")(items_for(req, 1), [Image.fromarray(noisy)])
    m = outs[0].metrics
    assert m is not None
    assert m["noise_removed"] == 0.0 and m["noise_in"] > 15.0
    row = {n: [m[n]] for n in E.EFFECT_NAMES}
    failing = [c.name for c in E.effect_checks("denoise", row, noise_level=25) if not c.passed[0]]
    assert failing == ["denoise_noise_removed"]
