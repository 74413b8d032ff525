"""The runner (models/runner.py): dispatch to a family, micro-batches, OOM back-off, per-item
isolation, metrics — and the worked example of adding a model family."""

from __future__ import annotations

import ast
import io
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest
import torch
from diffusers import DiffusionPipeline
from dummy_models import items_for, make_request, photo, png_size
from PIL import Image

import augflow.models.loading as loading
import augflow.models.runner as runner
from augflow.models.families.base import Computed, ModelContext
from augflow.models.families.common import present
from augflow.models.images import pil_to_tensor
from augflow.models.loading import register_pipeline_class
from augflow.models.metrics import PSNR_CAP_DB
from augflow.models.runner import AugmentModel, register_family, registered_families
from augflow.schemas import ModelLoadError, RequestError, WorkItem
from augflow.schemas.request import UpscaleOp

MODELS = Path(__file__).resolve().parents[2] / "models"


def _pngs(model: AugmentModel, items: Sequence[WorkItem], srcs: Sequence[Any]) -> list[bytes]:
    outs = model(items, srcs)
    assert [o.error for o in outs] == [None] * len(outs)
    return [o.png for o in outs if o.png is not None]


# --- micro-batches -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "operation",
    [
        {"kind": "generate", "num_images": 4},
        {"kind": "img2img", "variants": 2, "strength": 0.6},
        {"kind": "upscale", "factor": 2},
    ],
)
def test_cpu_default_batches_small_unets_with_a_fixed_composition(
    ddpm_dir: Path, operation: dict
) -> None:
    req = make_request(ddpm_dir, operation)
    n_src = 0 if operation["kind"] == "generate" else 2
    items = items_for(req, n_src)
    srcs = [None] * 4 if n_src == 0 else [photo(13, 9, seed=i // 2) for i in range(len(items))]
    if operation["kind"] == "upscale":
        srcs = [photo(13, 9, seed=i) for i in range(len(items))]
    model = AugmentModel(req, "cpu")
    # a 16x16 UNet: 256 pixels, so the default fills calls up to the CPU maximum of 16 images
    assert model.micro_batch == 16 == model.speed_settings["micro_batch"]
    rows: list[int] = []
    model.task_pipeline.unet.register_forward_pre_hook(
        lambda _m, args: rows.append(args[0].shape[0])
    )
    whole = _pngs(model, items, srcs)
    assert max(rows) == len(items)  # the whole (small) call in one model call per step
    explicit = make_request(ddpm_dir, operation, compute={"micro_batch": 16})
    assert _pngs(AugmentModel(explicit, "cpu"), items, srcs) == whole  # the default is a value
    assert _pngs(AugmentModel(req, "cpu"), items, srcs) == whole  # a fresh actor: same bytes


def test_micro_batches_have_a_fixed_composition(ddpm_dir: Path) -> None:
    req = make_request(ddpm_dir, {"kind": "generate", "num_images": 5}, compute={"micro_batch": 2})
    model = AugmentModel(req, "cpu")
    assert model.micro_batch == 2 and model.speed_settings["micro_batch"] == 2
    rows: list[int] = []
    model.task_pipeline.unet.register_forward_pre_hook(
        lambda _m, args: rows.append(args[0].shape[0])
    )
    items = items_for(req, 0)
    whole = _pngs(model, items, [None] * 5)
    assert set(rows) == {2, 1} and rows.count(1) == 4  # [0,1] [2,3] [4], 4 steps each
    # the same call splits the same way every time, on every worker: same bytes
    assert _pngs(model, items[:2], [None] * 2) + _pngs(model, items[2:4], [None] * 2) == whole[:4]
    assert len(set(whole)) == 5


def test_different_seeds_differ(ddpm_dir: Path) -> None:
    a = make_request(ddpm_dir, {"kind": "generate", "num_images": 2}, seed=1)
    b = make_request(ddpm_dir, {"kind": "generate", "num_images": 2}, seed=2)
    pa = _pngs(AugmentModel(a, "cpu"), items_for(a, 0), [None] * 2)
    pb = _pngs(AugmentModel(b, "cpu"), items_for(b, 0), [None] * 2)
    assert pa[0] != pa[1]
    assert not set(pa) & set(pb)


# --- failures ----------------------------------------------------------------------------------------


def test_missing_source_is_an_item_error(ddpm_dir: Path) -> None:
    req = make_request(ddpm_dir, {"kind": "denoise"})
    outs = AugmentModel(req, "cpu")(items_for(req, 3), [photo(8, 8), None, photo(9, 9)])
    assert [o.error is None for o in outs] == [True, False, True]
    assert outs[1].png is None and "no source" in (outs[1].error or "")


def test_one_failing_item_does_not_sink_the_batch(ddpm_dir: Path, monkeypatch) -> None:
    req = make_request(ddpm_dir, {"kind": "generate", "num_images": 3}, compute={"micro_batch": 3})
    model = AugmentModel(req, "cpu")
    items = items_for(req, 0)
    real = model._run_chunk

    def flaky(chunk_items, chunk_sources):
        if any(it.row_id == items[1].row_id for it in chunk_items):
            raise RuntimeError("broken item (simulated)")
        return real(chunk_items, chunk_sources)

    monkeypatch.setattr(model, "_run_chunk", flaky)
    outs = model(items, [None] * 3)
    assert outs[0].error is None and outs[2].error is None
    assert "broken item" in (outs[1].error or "")
    assert model.micro_batch == 3  # not an out-of-memory error: the micro-batch stays


def test_cuda_oom_halves_the_micro_batch_and_retries(ddpm_dir: Path) -> None:
    req = make_request(
        ddpm_dir, {"kind": "generate", "num_images": 4}, steps=2, compute={"micro_batch": 4}
    )
    model = AugmentModel(req, "cpu")
    rows: list[int] = []

    def oom_once_above_two(_m: torch.nn.Module, args: tuple) -> None:
        rows.append(args[0].shape[0])
        if len(rows) == 1 and args[0].shape[0] > 2:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")

    model.task_pipeline.unet.register_forward_pre_hook(oom_once_above_two)
    items = items_for(req, 0)
    outs = model(items, [None] * 4)
    assert [o.error for o in outs] == [None] * 4
    assert all(png_size(o.png) == (16, 16) for o in outs)
    assert rows[0] == 4 and set(rows[1:]) == {2}  # every later call used the halved size
    assert model.micro_batch == 2
    more = model(items, [None] * 4)  # the next call starts at the lowered size
    assert [o.error for o in more] == [None] * 4 and set(rows[1:]) == {2}


# --- layers ------------------------------------------------------------------------------------------


def test_models_import_neither_prefect_nor_ray_nor_later_layers() -> None:
    """Layers run schemas -> models -> tasks -> flows: no module under models/ imports tasks/,
    flows/, Prefect or Ray, not even lazily inside a function (checked on the source)."""
    banned = ("augflow.tasks", "augflow.flows", "prefect", "ray")
    found = []
    for path in sorted(MODELS.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module]
            found += [
                f"{path.relative_to(MODELS)}: {n}"
                for n in names
                if any(n == b or n.startswith(b + ".") for b in banned)
            ]
    assert found == []
    code = (
        "import sys, augflow.models.runner, augflow.models.metrics, augflow.models.loading; "
        "bad = [m for m in ('prefect', 'ray', 'augflow.tasks', 'augflow.flows') "
        "if m in sys.modules]; "
        "sys.exit(f'imported {bad}' if bad else 0)"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_models_read_no_environment_variable() -> None:
    """Whatever can change output bytes is a request field (hashed); models/ reads no
    environment variable that could change them behind the hash."""
    readers = []
    for path in sorted(MODELS.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Attribute):
                name, line = node.attr, node.lineno
            elif isinstance(node, ast.Name):
                name, line = node.id, node.lineno
            else:
                continue
            if name in ("environ", "environb", "getenv"):
                readers.append(f"{path.relative_to(MODELS)}:{line}")
    assert readers == []


# --- dispatch, and the worked example of adding a family ----------------------------------------------


@pytest.fixture
def own_registries(monkeypatch: pytest.MonkeyPatch) -> None:
    """Registrations in a test stay in that test."""
    monkeypatch.setattr(runner, "_families", list(runner._families))
    monkeypatch.setattr(loading, "_registered_pipelines", dict(loading._registered_pipelines))


class NearestUpscalePipeline(DiffusionPipeline):
    """A weightless 'model' augflow does not ship: nearest-neighbour upscaling by ``factor``."""

    def __init__(self, factor: int = 2) -> None:
        super().__init__()
        self.register_to_config(factor=int(factor))

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        f = int(self.config.factor)
        return images.repeat_interleave(f, dim=-2).repeat_interleave(f, dim=-1)


class NearestUpscaleFamily:
    """Its family: the whole Family protocol (families/base.py) in twenty lines."""

    name: ClassVar[str] = "nearest"
    summary: ClassVar[str] = "upscale with NearestUpscalePipeline"

    @classmethod
    def matches(cls, pipeline: Any) -> bool:
        return isinstance(pipeline, NearestUpscalePipeline)

    def __init__(self, ctx: ModelContext) -> None:
        self.ctx = ctx
        self.pipe: Any = ctx.pipeline
        self.factor = int(self.pipe.config.factor)
        self.steps: int = 1  # no sampling loop

    def check(self) -> None:
        op = self.ctx.op
        if not isinstance(op, UpscaleOp):
            raise ModelLoadError(f"{self.ctx.model_id!r} only upscales, not {op.kind!r}")
        if op.factor != self.factor:
            raise RequestError("operation.factor", f"this model upscales x{self.factor} only")

    def expected_size(self, source_size: tuple[int, int] | None) -> tuple[int, int]:
        if source_size is None:
            raise ValueError("upscale needs the source size")
        return source_size[0] * self.factor, source_size[1] * self.factor

    def compute(
        self,
        items: Sequence[WorkItem],
        sources: Sequence[Image.Image | None],
        generators: list[torch.Generator],
    ) -> Computed:
        srcs = present(sources)
        return Computed(self.pipe(pil_to_tensor(srcs)), list(srcs))


def test_a_new_family_is_registered_and_dispatched(own_registries: None, tmp_path: Path) -> None:
    # 1. the model: a pipeline folder saved like any other
    folder = tmp_path / "nearest"
    NearestUpscalePipeline(factor=2).save_pretrained(folder)
    req = make_request(folder, {"kind": "upscale", "factor": 2})
    # augflow never imports a pipeline class named by a model folder...
    with pytest.raises(ModelLoadError, match="never loaded from a model folder"):
        AugmentModel(req, "cpu")
    # 2. ...until this process registers it; without a family it loads but nothing runs it
    register_pipeline_class("NearestUpscalePipeline", NearestUpscalePipeline)
    with pytest.raises(ModelLoadError, match=r"not supported; supported: .*unet"):
        AugmentModel(req, "cpu")
    # 3. the family goes in front of the built-ins; first match wins
    register_family(NearestUpscaleFamily)
    register_family(NearestUpscaleFamily)  # idempotent
    assert registered_families()[0] is NearestUpscaleFamily
    assert registered_families().count(NearestUpscaleFamily) == 1
    model = AugmentModel(req, "cpu")
    assert model.family.name == "nearest" and model.steps == 1
    # 4. the runner does the rest for it: micro-batches, PNGs, per-row metrics
    src = photo(5, 3)
    out = model(items_for(req, 1), [src])[0]
    assert out.error is None and out.png is not None and out.metrics is not None
    img = np.asarray(Image.open(io.BytesIO(out.png)))
    assert img.shape == (6, 10, 3) and np.array_equal(img[::2, ::2], np.asarray(src))
    assert (out.metrics["width"], out.metrics["height"]) == (10, 6)
    assert out.metrics["faithfulness_psnr"] == PSNR_CAP_DB  # exactly the source, scaled
    # and its check() refuses what the model cannot do, before any work
    with pytest.raises(RequestError) as e:
        AugmentModel(make_request(folder, {"kind": "upscale", "factor": 4}), "cpu")
    assert e.value.field == "operation.factor"


def test_a_family_returning_the_wrong_shape_fails_the_item(
    own_registries: None, tmp_path: Path
) -> None:
    class OneChannel(NearestUpscaleFamily):
        name: ClassVar[str] = "one-channel"

        def compute(self, items, sources, generators) -> Computed:
            c = super().compute(items, sources, generators)
            return Computed(c.images[:, :1], c.references)

    folder = tmp_path / "nearest"
    NearestUpscalePipeline(factor=2).save_pretrained(folder)
    register_pipeline_class("NearestUpscalePipeline", NearestUpscalePipeline)
    register_family(OneChannel)
    req = make_request(folder, {"kind": "upscale", "factor": 2})
    out = AugmentModel(req, "cpu")(items_for(req, 1), [photo(4, 4)])[0]
    assert out.png is None and "expected (1, 3, H, W)" in (out.error or "")
