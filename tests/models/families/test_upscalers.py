"""The dedicated upscalers (SD x4, latent x2, LDM super-resolution): sizes, validation, default
steps, and tiling driven by the request's ``operation.tile`` / ``tile_overlap``."""

from __future__ import annotations

import os

import pytest
import torch
from dummy_models import items_for, make_request, noise_photo, png_size

from augflow.models.families.upscalers import DEFAULT_TILES, UpscalerFamily
from augflow.models.runner import AugmentModel
from augflow.schemas import RequestError
from augflow.schemas.errors import ModelLoadError

os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.mark.parametrize(
    ("fixture", "factor"), [("x4_dir", 4), ("latent_x2_dir", 2), ("ldm_dir", 4)]
)
def test_each_upscaler(request: pytest.FixtureRequest, fixture: str, factor: int) -> None:
    folder = request.getfixturevalue(fixture)
    model = AugmentModel(make_request(folder, {"kind": "upscale", "factor": factor}, steps=2))
    assert isinstance(model.family, UpscalerFamily)
    items = items_for(model.request, 1)
    out = model(items, [noise_photo()])[0]
    size = (20 * factor, 12 * factor)
    assert out.error is None and png_size(out.png) == size
    assert out.metrics is not None and (out.metrics["width"], out.metrics["height"]) == size
    assert model.expected_size((20, 12)) == size


def test_refuses_wrong_factor_and_other_operations(x4_dir, ldm_dir) -> None:
    with pytest.raises(RequestError) as e:
        AugmentModel(make_request(x4_dir, {"kind": "upscale", "factor": 2}), "cpu")
    assert e.value.field == "operation.factor" and "x4" in str(e.value)
    with pytest.raises(ModelLoadError, match="only does operation 'upscale'"):
        AugmentModel(make_request(ldm_dir, {"kind": "denoise"}), "cpu")


def test_default_steps_and_tiles(ldm_dir) -> None:
    model = AugmentModel(make_request(ldm_dir, {"kind": "upscale", "factor": 4}, steps=None))
    assert model.steps == 100  # LDMSuperResolutionPipeline.__call__'s default
    family = model.family
    assert isinstance(family, UpscalerFamily)
    assert family.tile == DEFAULT_TILES["LDMSuperResolutionPipeline"]
    assert family.overlap == family.tile // 8


def test_x4_tiles_a_large_input_as_the_request_says(x4_dir) -> None:
    op = {"kind": "upscale", "factor": 4, "tile": 16, "tile_overlap": 4}
    # one tile per call, to count the tiles (the CPU default batches this small UNet's tiles)
    one = {"micro_batch": 1}
    model = AugmentModel(make_request(x4_dir, op, steps=1, compute=one), "cpu")
    pipe = model.task_pipeline
    assert pipe.vae.use_tiling  # the VAE tiles too
    seen: list[tuple[int, ...]] = []
    pipe.unet.register_forward_pre_hook(lambda _m, args: seen.append(tuple(args[0].shape)))
    decoded: list[tuple[int, ...]] = []
    pipe.vae.decoder.register_forward_pre_hook(
        lambda _m, args: decoded.append(tuple(args[0].shape))
    )
    big = noise_photo(w=28, h=20, seed=3)
    items = items_for(model.request, 1)
    out = model(items, [big])[0]
    assert out.error is None and png_size(out.png) == (112, 80)
    # the UNet never saw more than one 16x16 low-res tile, the decoder never a whole image
    assert max(s[-1] for s in seen) <= 16 and max(s[-2] for s in seen) <= 16
    assert len(seen) == 2 * 3  # 1 step x tiles (2 rows x 3 columns of tiles), one at a time
    assert max(s[-1] for s in decoded) < 28 and max(s[-2] for s in decoded) < 20
    # seamless enough to still be the same picture: faithful to the input at its own scale
    assert out.metrics is not None and out.metrics["faithfulness_psnr"] is not None
    # the tile fields are part of the request, so another tiling is another request hash
    untiled = make_request(x4_dir, {"kind": "upscale", "factor": 4}, steps=1, compute=one)
    assert untiled.request_hash != model.request.request_hash


def test_tiles_are_batched_by_the_micro_batch_and_oom_halves_it(x4_dir) -> None:
    op = {"kind": "upscale", "factor": 4, "tile": 16, "tile_overlap": 4}
    req = make_request(x4_dir, op, steps=1, compute={"micro_batch": 4})
    model = AugmentModel(req, "cpu")
    family = model.family
    assert isinstance(family, UpscalerFamily) and family.tile_batch == 4
    rows: list[int] = []
    raised: list[bool] = []

    def oom_once(_m: torch.nn.Module, args: tuple) -> None:
        rows.append(args[0].shape[0])
        if not raised and args[0].shape[0] > 2:
            raised.append(True)
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")

    model.task_pipeline.unet.register_forward_pre_hook(oom_once)
    out = model(items_for(req, 1), [noise_photo(w=28, h=20, seed=3)])[0]
    assert out.error is None and png_size(out.png) == (112, 80)
    assert rows[0] == 4 and raised  # 6 tiles: the first call had 4 of them
    assert family.tile_batch == 2 and max(rows[1:]) <= 2  # halved, for good
