"""The pixel-UNet family (DDPMPipeline / DDIMPipeline): every operation's sizes, conditioning,
validation, default steps and grey (1-channel) models, through AugmentModel like real use."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from dummy_models import items_for, make_request, photo, png_size
from PIL import Image

from augflow.models.families.unet import UNetFamily
from augflow.models.images import pil_to_tensor
from augflow.models.loading import SCHEDULER_CLASSES
from augflow.models.runner import AugmentModel, ImageOutput
from augflow.schemas import ModelLoadError, RequestError


def _ok(outs: list[ImageOutput]) -> None:
    for o in outs:
        assert o.error is None, o.error
        assert o.png is not None and o.metrics is not None
        assert o.metrics["decodable"] is True
        assert (o.metrics["width"], o.metrics["height"]) == (
            o.metrics["expected_width"],
            o.metrics["expected_height"],
        )


def _sizes(outs: list[ImageOutput]) -> list[tuple[int, int]]:
    return [png_size(o.png) for o in outs]


def test_generate_native_and_requested_size(ddpm_dir: Path) -> None:
    req = make_request(ddpm_dir, {"kind": "generate", "num_images": 3})
    model = AugmentModel(req, "cpu")
    assert isinstance(model.family, UNetFamily) and model.family.name == "unet"
    assert model.model_revision.startswith("sha256:")
    assert model.scheduler_name == "ddpm"
    outs = model(items_for(req, 0), [None] * 3)
    _ok(outs)
    assert _sizes(outs) == [(16, 16)] * 3
    assert all(o.metrics["faithfulness_psnr"] is None for o in outs)
    req = make_request(ddpm_dir, {"kind": "generate", "num_images": 1}, image_size=24)
    assert _sizes(AugmentModel(req, "cpu")(items_for(req, 0), [None])) == [(24, 24)]


def test_img2img_variants(ddim_dir: Path) -> None:
    req = make_request(ddim_dir, {"kind": "img2img", "variants": 3, "strength": 0.5})
    model = AugmentModel(req, "cpu")
    items = items_for(req, 2)
    srcs = [photo(21, 13, seed=0)] * 3 + [photo(40, 30, seed=1)] * 3
    outs = model(items, srcs)
    _ok(outs)
    assert _sizes(outs) == [(16, 16)] * 6
    assert len({o.png for o in outs}) == 6  # every variant differs
    assert all(o.metrics["faithfulness_psnr"] > 0 for o in outs)
    assert model.expected_size((21, 13)) == (16, 16)


@pytest.mark.parametrize("size", [(21, 13), (16, 16), (5, 3)])
def test_denoise_keeps_any_size(ddpm_dir: Path, size: tuple[int, int]) -> None:
    req = make_request(ddpm_dir, {"kind": "denoise", "noise_level": 25})
    model = AugmentModel(req, "cpu")
    outs = model(items_for(req, 2), [photo(*size), photo(*size, seed=3)])
    _ok(outs)
    assert _sizes(outs) == [size] * 2
    assert model.expected_size(size) == size


def test_denoise_without_a_sigma_estimates_each_images_own(ddpm_dir: Path) -> None:
    from augflow.models.sr3 import estimate_noise_sigma

    rng = np.random.default_rng(0)
    base = np.asarray(photo(24, 24), dtype=np.float64)
    noisy = [
        Image.fromarray(np.clip(base + rng.normal(0, s, base.shape), 0, 255).astype(np.uint8))
        for s in (10, 60)
    ]
    est = estimate_noise_sigma(pil_to_tensor(noisy))
    assert est[0] < est[1]  # the estimator tells the two noise levels apart
    unset = make_request(ddpm_dir, {"kind": "denoise"})
    outs = AugmentModel(unset, "cpu")(items_for(unset, 2), noisy)
    _ok(outs)
    # unset = each image at its own σ: the same as asking for that σ explicitly, image by image
    for img, sigma, out in zip(noisy, est, outs, strict=True):
        fixed = make_request(ddpm_dir, {"kind": "denoise", "noise_level": max(float(sigma), 0.5)})
        (again,) = AugmentModel(fixed, "cpu")(items_for(fixed, 1), [img])
        assert again.png == out.png


@pytest.mark.parametrize("factor", [2, 4])
def test_upscale_sizes(ddpm_dir: Path, factor: int) -> None:
    req = make_request(ddpm_dir, {"kind": "upscale", "factor": factor, "strength": 0.3})
    model = AugmentModel(req, "cpu")
    srcs = [photo(11, 7), photo(8, 8), photo(11, 7, seed=5)]  # mixed sizes in one call
    outs = model(items_for(req, 3), srcs)
    _ok(outs)
    assert _sizes(outs) == [
        (11 * factor, 7 * factor),
        (8 * factor, 8 * factor),
        (11 * factor, 7 * factor),
    ]
    assert model.expected_size((11, 7)) == (11 * factor, 7 * factor)


@pytest.mark.parametrize("scheduler", list(SCHEDULER_CLASSES))
@pytest.mark.parametrize("kind", ["generate", "img2img"])
def test_every_scheduler_runs(ddpm_dir: Path, scheduler: str, kind: str) -> None:
    op = (
        {"kind": "generate", "num_images": 2}
        if kind == "generate"
        else {"kind": "img2img", "variants": 2}
    )
    req = make_request(ddpm_dir, op, scheduler=scheduler)
    model = AugmentModel(req, "cpu")
    assert model.scheduler_name == scheduler
    srcs = [None, None] if kind == "generate" else [photo(16, 16)] * 2
    outs = model(items_for(req, 1), srcs)
    _ok(outs)
    assert not any(o.metrics["has_nan"] for o in outs)


def test_nan_model_flags_and_still_writes(nan_dir: Path) -> None:
    req = make_request(nan_dir, {"kind": "generate", "num_images": 2})
    outs = AugmentModel(req, "cpu")(items_for(req, 0), [None] * 2)
    _ok(outs)
    assert all(o.metrics["has_nan"] for o in outs)


def test_black_model_is_blank(black_dir: Path) -> None:
    req = make_request(black_dir, {"kind": "generate", "num_images": 2})
    outs = AugmentModel(req, "cpu")(items_for(req, 0), [None] * 2)
    _ok(outs)
    assert all(o.metrics["is_blank"] and o.metrics["pixel_std"] == 0 for o in outs)


def test_class_conditional(class_cond_dir: Path) -> None:
    req = make_request(
        class_cond_dir, {"kind": "generate", "num_images": 2, "class_labels": [0, 2]}
    )
    model = AugmentModel(req, "cpu")
    items = items_for(req, 0)
    assert [it.class_label for it in items] == [0, 2]
    outs = model(items, [None, None])
    _ok(outs)
    relabelled = [items[0].model_copy(update={"class_label": 1})]
    assert model(relabelled, [None])[0].png != outs[0].png  # the label reaches the UNet
    unlabelled = model([items[0].model_copy(update={"class_label": None})], [None])
    assert unlabelled[0].png is None and "no class_label" in (unlabelled[0].error or "")
    with pytest.raises(RequestError, match="class-conditional"):
        AugmentModel(make_request(class_cond_dir, {"kind": "generate", "num_images": 1}), "cpu")
    with pytest.raises(RequestError, match="outside"):
        AugmentModel(
            make_request(
                class_cond_dir, {"kind": "generate", "num_images": 1, "class_labels": [3]}
            ),
            "cpu",
        )
    # sources with labels: tests/models/families/test_unet_labels.py


def test_request_mismatches_are_refused(ddpm_dir: Path, mask_file: Path) -> None:
    with pytest.raises(RequestError, match="unconditional"):
        AugmentModel(
            make_request(ddpm_dir, {"kind": "generate", "num_images": 1, "class_labels": [0]}),
            "cpu",
        )
    with pytest.raises(RequestError, match="no text prompt"):
        AugmentModel(make_request(ddpm_dir, {"kind": "img2img", "prompt": "a cat"}), "cpu")
    with pytest.raises(RequestError, match="steps"):
        AugmentModel(
            make_request(ddpm_dir, {"kind": "generate", "num_images": 1}, steps=500), "cpu"
        )
    with pytest.raises(ModelLoadError, match="not supported for operation 'inpaint'"):
        AugmentModel(make_request(ddpm_dir, {"kind": "inpaint", "mask": str(mask_file)}), "cpu")


def test_default_steps_come_from_the_pipeline_class(ddpm_dir: Path, ddim_dir: Path) -> None:
    # DDIMPipeline.__call__ defaults to 50 steps; the tiny models have 100 training timesteps
    op = {"kind": "generate", "num_images": 1}
    ddim = AugmentModel(make_request(ddim_dir, op, steps=None), "cpu")
    assert ddim.steps == 50
    assert AugmentModel(make_request(ddim_dir, op, steps=3), "cpu").steps == 3
    # DDPMPipeline defaults to 1000: more than this model was trained with, which is refused
    # with a pointer to the field (the check uses the effective value, not the unset field)
    with pytest.raises(RequestError) as e:
        AugmentModel(make_request(ddpm_dir, op, steps=None), "cpu")
    assert e.value.field == "steps" and "1000" in str(e.value) and "default" in str(e.value)


def test_a_grey_model_generates_grey_rgb_images(grey_dir: Path) -> None:
    req = make_request(grey_dir, {"kind": "generate", "num_images": 2})
    model = AugmentModel(req, "cpu")
    assert model.family.name == "unet"
    outs = model(items_for(req, 0), [None] * 2)
    _ok(outs)
    for o in outs:
        assert o.png is not None
        arr = np.asarray(Image.open(io.BytesIO(o.png)))
        assert arr.shape == (16, 16, 3)
        assert (arr[..., 0] == arr[..., 1]).all() and (arr[..., 1] == arr[..., 2]).all()
        assert arr.std() > 0  # a picture, not a flat fill
    assert outs[0].png != outs[1].png


@pytest.mark.parametrize(
    "op", [{"kind": "img2img", "variants": 1}, {"kind": "denoise"}, {"kind": "upscale"}]
)
def test_a_grey_model_takes_sources_as_luminance(grey_dir: Path, op: dict) -> None:
    req = make_request(grey_dir, op)
    model = AugmentModel(req, "cpu")
    src = photo(12, 10)
    outs = model(items_for(req, 1), [src])
    _ok(outs)
    assert outs[0].png is not None
    arr = np.asarray(Image.open(io.BytesIO(outs[0].png)))
    assert (arr[..., 0] == arr[..., 2]).all()
    # faithfulness is measured against the luminance the model saw, so it is finite and real
    assert outs[0].metrics is not None and outs[0].metrics["faithfulness_psnr"] > 0
