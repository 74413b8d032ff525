"""AugmentModel: sizes per operation, determinism, NaN/blank handling, per-item failures."""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from dummy_models import items_for, make_request
from PIL import Image

from augflow.models.loading import SCHEDULER_CLASSES
from augflow.models.runner import AugmentModel, ImageOutput
from augflow.schemas import ModelLoadError, RequestError


def _photo(w: int, h: int, seed: int = 0) -> Image.Image:
    """A smooth picture plus a little texture (not pure noise, so PSNR means something)."""
    yy, xx = np.mgrid[0:h, 0:w]
    rng = np.random.default_rng(seed)
    base = np.stack([xx * 255 / max(w - 1, 1), yy * 255 / max(h - 1, 1), np.full((h, w), 128)], -1)
    return Image.fromarray(np.clip(base + rng.normal(0, 8, base.shape), 0, 255).astype(np.uint8))


def _sizes(outs: list[ImageOutput]) -> list[tuple[int, int]]:
    return [Image.open(io.BytesIO(o.png)).size for o in outs]


def _ok(outs: list[ImageOutput]) -> None:
    for o in outs:
        assert o.error is None, o.error
        assert o.png is not None and o.metrics is not None
        assert o.metrics["decodable"] is True
        assert (o.metrics["width"], o.metrics["height"]) == (
            o.metrics["expected_width"],
            o.metrics["expected_height"],
        )


def test_generate_native_and_requested_size(ddpm_dir: Path) -> None:
    req = make_request(ddpm_dir, {"kind": "generate", "num_images": 3})
    model = AugmentModel(req, "cpu")
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
    srcs = [_photo(21, 13, seed=0)] * 3 + [_photo(40, 30, seed=1)] * 3
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
    outs = model(items_for(req, 2), [_photo(*size), _photo(*size, seed=3)])
    _ok(outs)
    assert _sizes(outs) == [size] * 2
    assert model.expected_size(size) == size


@pytest.mark.parametrize("factor", [2, 4])
def test_upscale_sizes(ddpm_dir: Path, factor: int) -> None:
    req = make_request(ddpm_dir, {"kind": "upscale", "factor": factor, "strength": 0.3})
    model = AugmentModel(req, "cpu")
    srcs = [_photo(11, 7), _photo(8, 8), _photo(11, 7, seed=5)]  # mixed sizes in one call
    outs = model(items_for(req, 3), srcs)
    _ok(outs)
    assert _sizes(outs) == [
        (11 * factor, 7 * factor),
        (8 * factor, 8 * factor),
        (11 * factor, 7 * factor),
    ]
    assert model.expected_size((11, 7)) == (11 * factor, 7 * factor)


@pytest.mark.parametrize(
    "operation",
    [
        {"kind": "generate", "num_images": 4},
        {"kind": "img2img", "variants": 2, "strength": 0.6},
        {"kind": "upscale", "factor": 2},
    ],
)
def test_batch_size_never_changes_an_image(ddpm_dir: Path, operation: dict) -> None:
    req = make_request(ddpm_dir, operation)
    n_src = 0 if operation["kind"] == "generate" else 2
    items = items_for(req, n_src)
    srcs = [None] * 4 if n_src == 0 else [_photo(13, 9, seed=i // 2) for i in range(len(items))]
    if operation["kind"] == "upscale":
        srcs = [_photo(13, 9, seed=i) for i in range(len(items))]
    model = AugmentModel(req, "cpu")
    whole = [o.png for o in model(items, srcs)]
    ones = [model([it], [s])[0].png for it, s in zip(items, srcs, strict=True)]
    assert whole == ones
    again = [o.png for o in AugmentModel(req, "cpu")(items[::-1], srcs[::-1])][::-1]
    assert again == whole  # a fresh actor, other order: same bytes


def test_batched_mode_runs(ddpm_dir: Path) -> None:
    req = make_request(ddpm_dir, {"kind": "generate", "num_images": 4})
    outs = AugmentModel(req, "cpu", batch_invariant=False)(items_for(req, 0), [None] * 4)
    _ok(outs)


def test_different_seeds_differ(ddpm_dir: Path) -> None:
    a = make_request(ddpm_dir, {"kind": "generate", "num_images": 2}, seed=1)
    b = make_request(ddpm_dir, {"kind": "generate", "num_images": 2}, seed=2)
    pa = [o.png for o in AugmentModel(a, "cpu")(items_for(a, 0), [None] * 2)]
    pb = [o.png for o in AugmentModel(b, "cpu")(items_for(b, 0), [None] * 2)]
    assert pa[0] != pa[1]
    assert not set(pa) & set(pb)


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
    srcs = [None, None] if kind == "generate" else [_photo(16, 16)] * 2
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
    with pytest.raises(RequestError, match="class-conditional"):
        AugmentModel(make_request(class_cond_dir, {"kind": "generate", "num_images": 1}), "cpu")
    with pytest.raises(RequestError, match="outside"):
        AugmentModel(
            make_request(
                class_cond_dir, {"kind": "generate", "num_images": 1, "class_labels": [3]}
            ),
            "cpu",
        )
    with pytest.raises(ModelLoadError, match="not supported"):
        AugmentModel(make_request(class_cond_dir, {"kind": "denoise"}), "cpu")


def test_request_mismatches_are_refused(ddpm_dir: Path) -> None:
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


def test_missing_source_is_an_item_error(ddpm_dir: Path) -> None:
    req = make_request(ddpm_dir, {"kind": "denoise"})
    outs = AugmentModel(req, "cpu")(items_for(req, 3), [_photo(8, 8), None, _photo(9, 9)])
    assert [o.error is None for o in outs] == [True, False, True]
    assert outs[1].png is None and "no source" in outs[1].error


def test_one_failing_item_does_not_sink_the_batch(ddpm_dir: Path, monkeypatch) -> None:
    req = make_request(ddpm_dir, {"kind": "generate", "num_images": 3})
    model = AugmentModel(req, "cpu", batch_invariant=False)
    items = items_for(req, 0)
    real = model._run_chunk

    def flaky(chunk_items, chunk_sources):
        if any(it.row_id == items[1].row_id for it in chunk_items):
            raise RuntimeError("CUDA out of memory (simulated)")
        return real(chunk_items, chunk_sources)

    monkeypatch.setattr(model, "_run_chunk", flaky)
    outs = model(items, [None] * 3)
    assert outs[0].error is None and outs[2].error is None
    assert "out of memory" in outs[1].error


def test_models_import_neither_prefect_nor_ray() -> None:
    code = (
        "import sys, augflow.models.runner, augflow.models.metrics, augflow.models.loading; "
        "bad = [m for m in ('prefect', 'ray') if m in sys.modules]; "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


@pytest.mark.parametrize(
    ("task", "operation", "size", "out"),
    [
        ("denoise", {"kind": "denoise", "noise_level": 15}, (21, 13), (21, 13)),
        ("upscale", {"kind": "upscale", "factor": 2}, (11, 7), (22, 14)),
        ("upscale", {"kind": "upscale", "factor": 4}, (5, 4), (20, 16)),
    ],
)
def test_sr3_pipeline_branch(tmp_path: Path, task, operation, size, out) -> None:
    pytest.importorskip("augflow.models.sr3")
    from dummy_models import make_tiny_sr3

    folder = make_tiny_sr3(tmp_path / task, task=task)
    req = make_request(folder, operation, steps=2)
    model = AugmentModel(req, "cpu")
    assert model.family == "sr3"
    srcs = [_photo(*size), _photo(*size, seed=1)]
    outs = model(items_for(req, 2), srcs)
    _ok(outs)
    assert _sizes(outs) == [out, out]
    assert [o.png for o in outs] == [
        model([it], [s])[0].png for it, s in zip(items_for(req, 2), srcs, strict=True)
    ]


def test_sr3_refuses_the_wrong_task(tmp_path: Path) -> None:
    pytest.importorskip("augflow.models.sr3")
    from dummy_models import make_tiny_sr3

    folder = make_tiny_sr3(tmp_path / "den", task="denoise")
    with pytest.raises(ModelLoadError, match="trained for 'denoise'"):
        AugmentModel(make_request(folder, {"kind": "upscale", "factor": 2}), "cpu")
    with pytest.raises(ModelLoadError, match="not supported for operation 'generate'"):
        AugmentModel(make_request(folder, {"kind": "generate", "num_images": 1}), "cpu")
