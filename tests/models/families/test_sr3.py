"""The SR3 family: augflow's SR3Pipeline (models/sr3.py) behind AugmentModel — sizes, batch
invariance, the trained task/factor check and the model's default steps."""

from __future__ import annotations

from pathlib import Path

import pytest
from dummy_models import items_for, make_request, make_tiny_sr3, photo, png_size

from augflow.models.families.sr3 import SR3Family
from augflow.models.runner import AugmentModel
from augflow.schemas import ModelLoadError


@pytest.fixture(scope="module")
def sr3_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("sr3")
    return {task: make_tiny_sr3(d / task, task=task) for task in ("denoise", "upscale")}


@pytest.mark.parametrize(
    ("task", "operation", "size", "out"),
    [
        ("denoise", {"kind": "denoise", "noise_level": 15}, (21, 13), (21, 13)),
        ("upscale", {"kind": "upscale", "factor": 2}, (11, 7), (22, 14)),
        ("upscale", {"kind": "upscale", "factor": 4}, (5, 4), (20, 16)),
    ],
)
def test_sizes_and_batch_invariance(sr3_dirs, task, operation, size, out) -> None:
    req = make_request(sr3_dirs[task], operation, steps=2, compute={"micro_batch": 2})
    model = AugmentModel(req, "cpu")
    assert isinstance(model.family, SR3Family) and model.family.name == "sr3"
    srcs = [photo(*size), photo(*size, seed=1)]
    items = items_for(req, 2)
    outs = model(items, srcs)
    assert [o.error for o in outs] == [None, None]
    assert [png_size(o.png) for o in outs] == [out, out]
    assert all(o.metrics and o.metrics["faithfulness_psnr"] > 0 for o in outs)
    # SR3Pipeline runs each image on its own inside a call: a micro-batch of 2 equals two of 1
    assert [o.png for o in outs] == [
        model([it], [s])[0].png for it, s in zip(items, srcs, strict=True)
    ]


def test_refuses_what_it_was_not_trained_for(sr3_dirs) -> None:
    with pytest.raises(ModelLoadError, match="trained for 'denoise'"):
        AugmentModel(make_request(sr3_dirs["denoise"], {"kind": "upscale", "factor": 2}), "cpu")
    with pytest.raises(ModelLoadError, match="not supported for operation 'generate'"):
        AugmentModel(
            make_request(sr3_dirs["denoise"], {"kind": "generate", "num_images": 1}), "cpu"
        )


def test_default_steps_are_the_models_config(sr3_dirs) -> None:
    req = make_request(sr3_dirs["denoise"], {"kind": "denoise"}, steps=None)
    model = AugmentModel(req, "cpu")
    assert model.steps == model.pipeline.config.default_steps == 4
    assert AugmentModel(make_request(sr3_dirs["denoise"], {"kind": "denoise"}, steps=2)).steps == 2
