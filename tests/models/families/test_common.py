"""The helpers the model families share (families/common.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from dummy_models import make_request

from augflow.models.families import base
from augflow.models.families.common import (
    call_default_steps,
    check_training_timesteps,
    output_size,
    present,
    run_padded,
)
from augflow.schemas import ModelLoadError, RequestError
from augflow.schemas.request import parse_request


def test_call_default_steps_reads_the_pipeline_class() -> None:
    from diffusers import DDIMPipeline, DDPMPipeline

    class NoDefault:
        def __call__(self, num_inference_steps: int) -> None: ...

    # an instance is never built: only the class's __call__ signature is read
    assert call_default_steps(DDPMPipeline.__new__(DDPMPipeline)) == 1000
    assert call_default_steps(DDIMPipeline.__new__(DDIMPipeline)) == 50
    with pytest.raises(ModelLoadError, match="set `steps`"):
        call_default_steps(NoDefault())


def test_training_timesteps_check_says_where_the_value_came_from(ddpm_dir: Path) -> None:
    from diffusers import DDPMScheduler

    sched = DDPMScheduler(num_train_timesteps=10)
    for steps, words in ((None, "the model's default"), (20, "20 exceeds")):
        req = make_request(ddpm_dir, {"kind": "generate", "num_images": 1}, steps=steps)
        ctx = base.ModelContext(req, None, "m", "cpu", torch.float32, 1)
        with pytest.raises(RequestError) as e:
            check_training_timesteps(ctx, 20, sched)
        assert e.value.field == "steps" and words in str(e.value)
        check_training_timesteps(ctx, 10, sched)  # as many as it was trained with is fine


def test_output_size_per_operation() -> None:
    def op(body: dict):
        data = {"dataset": "d", "model": {"id": "m"}, "operation": body}
        if body["kind"] != "generate":
            data["inputs"] = "/x"
        return parse_request(data).operation

    assert output_size(op({"kind": "generate", "num_images": 1}), (16, 8), None) == (16, 8)
    assert output_size(op({"kind": "img2img"}), (16, 8), (40, 30)) == (16, 8)
    assert output_size(op({"kind": "denoise"}), (0, 0), (40, 30)) == (40, 30)
    assert output_size(op({"kind": "upscale", "factor": 4}), (0, 0), (5, 3)) == (20, 12)
    with pytest.raises(ValueError, match="needs the source size"):
        output_size(op({"kind": "denoise"}), (0, 0), None)


@pytest.mark.parametrize(("h", "w"), [(13, 21), (16, 16), (3, 5)])
def test_run_padded_hands_a_multiple_and_crops_back(h: int, w: int) -> None:
    x = torch.arange(h * w, dtype=torch.float32).reshape(1, 1, h, w)
    seen: list[tuple[int, ...]] = []

    def fn(t: torch.Tensor) -> torch.Tensor:
        seen.append(tuple(t.shape))
        return t * 2

    y = run_padded(x, 8, fn)
    assert seen[0][-2] % 8 == 0 and seen[0][-1] % 8 == 0
    assert torch.equal(y, x * 2)  # the padding never leaks into the kept pixels


def test_present_refuses_a_missing_source() -> None:
    from PIL import Image

    img = Image.new("RGB", (2, 2))
    assert present([img, img]) == [img, img]
    with pytest.raises(ValueError, match="no source image"):
        present([img, None])
