"""Every model family through augflow's loader and runner, with tiny random-weight pipelines.

Each pipeline class is built from configs (tiny UNet2DConditionModel, AutoencoderKL / VQModel,
CLIPTextModel and a CLIPTokenizer from a locally written vocab), saved with safetensors and loaded
by ``load_pipeline`` exactly like a real checkpoint. Random weights make noise-like pictures;
these tests check plumbing: sizes, prompts, lineage, validation, speed features, OOM back-off and
tiling.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from dummy_models import (
    items_for,
    make_request,
    make_tiny_latent_upscale_x2,
    make_tiny_ldm_sr,
    make_tiny_sd,
    make_tiny_sd_upscale_x4,
)
from PIL import Image

from augflow.models.runner import AugmentModel
from augflow.models.speed import SpeedOptions
from augflow.schemas import RequestError, WorkItem, parse_request
from augflow.schemas.errors import ModelLoadError

os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("families")
    return {
        "sd": make_tiny_sd(d / "sd"),
        "sd-inpaint": make_tiny_sd(d / "sd-inpaint", inpaint=True),
        "x4": make_tiny_sd_upscale_x4(d / "x4"),
        "latent-x2": make_tiny_latent_upscale_x2(d / "latent-x2"),
        "ldm": make_tiny_ldm_sr(d / "ldm"),
    }


@pytest.fixture(scope="module")
def mask_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    p = tmp_path_factory.mktemp("mask") / "mask.png"
    m = np.zeros((8, 8), np.uint8)
    m[2:6, 2:6] = 255
    Image.fromarray(m).save(p)
    return p


def _photo(w: int = 20, h: int = 12, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8))


def _run(model: AugmentModel, n_sources: int = 1, src: Image.Image | None = None):
    items = items_for(model.request, n_sources)
    sources = [None if model.op.kind == "generate" else (src or _photo()) for _ in items]
    outs = model(items, sources)
    assert [o.error for o in outs] == [None] * len(items)
    return items, outs


def _size(png: bytes) -> tuple[int, int]:
    return Image.open(io.BytesIO(png)).size


CASES = [
    # (model, operation, expected (w, h) for a 20x12 source / generate, family)
    ("sd", {"kind": "generate", "num_images": 2, "prompts": ["a cat"]}, (16, 16), "text-latent"),
    ("sd", {"kind": "img2img", "variants": 2, "strength": 0.5}, (16, 16), "text-latent"),
    ("sd", {"kind": "denoise", "noise_level": 60}, (20, 12), "text-latent"),
    ("sd", {"kind": "upscale", "factor": 2, "strength": 0.5}, (40, 24), "text-latent"),
    ("sd-inpaint", {"kind": "inpaint", "prompt": "a hat"}, (20, 12), "text-latent"),
    ("sd", {"kind": "inpaint"}, (20, 12), "text-latent"),  # legacy 4-channel inpainting
    ("x4", {"kind": "upscale", "factor": 4}, (80, 48), "upscaler"),
    ("latent-x2", {"kind": "upscale", "factor": 2}, (40, 24), "upscaler"),
    ("ldm", {"kind": "upscale", "factor": 4}, (80, 48), "upscaler"),
]


@pytest.mark.parametrize(("name", "op", "size", "family"), CASES, ids=lambda v: str(v)[:24])
def test_each_family_and_operation(models, mask_file, name, op, size, family) -> None:
    if op["kind"] == "inpaint":
        op = {**op, "mask": str(mask_file)}
    model = AugmentModel(make_request(models[name], op, steps=2), "cpu")
    assert model.family == family
    assert model.model_revision.startswith("sha256:")
    _, outs = _run(model)
    for out in outs:
        assert _size(out.png) == size
        assert (out.metrics["width"], out.metrics["height"]) == size
        assert (out.metrics["expected_width"], out.metrics["expected_height"]) == size
    if op["kind"] != "generate":
        assert model.expected_size((20, 12)) == size


def test_text_to_image_prompt_template_labels_and_determinism(models) -> None:
    op = {
        "kind": "generate",
        "num_images": 3,
        "class_names": ["cat", "dog"],
        "prompt_template": "a photo of a {label}",
    }
    request = make_request(models["sd"], op, steps=2, guidance_scale=3.0)
    model = AugmentModel(request, "cpu")
    items, outs = _run(model)  # 3 images, computed one by one on CPU
    assert [(it.class_label, it.prompt) for it in items] == [
        (0, "a photo of a cat"),
        (1, "a photo of a dog"),
        (0, "a photo of a cat"),
    ]
    # same seed, same prompt, computed alone: the same bytes as in the batch above
    again = model(items[:1], [None])
    assert again[0].png == outs[0].png
    # the tokenizer came from the saved folder (local vocab.json + merges.txt), not the hub
    tok = model.task_pipeline.tokenizer
    assert type(tok).__name__.startswith("CLIPTokenizer")
    assert tok("a photo").input_ids[0] == tok.bos_token_id


def test_sdpa_attention_is_the_default(models) -> None:
    model = AugmentModel(make_request(models["sd"], {"kind": "generate", "num_images": 1}), "cpu")
    assert model.speed_settings["attention"] == ["AttnProcessor2_0"]
    assert model.speed_settings.get("vae_slicing") is True
    assert "channels_last" not in model.speed_settings  # off on CPU by default
    cuda = SpeedOptions.for_device("cuda")
    assert cuda.channels_last and not cuda.batch_invariant
    cpu = SpeedOptions.for_device("cpu")
    assert cpu.batch_invariant and not cpu.channels_last and cpu.compile_backend is None


def test_channels_last_and_compile_run_on_cpu(models, monkeypatch) -> None:
    monkeypatch.setenv("AUGFLOW_CHANNELS_LAST", "1")
    monkeypatch.setenv("AUGFLOW_COMPILE", "eager")  # dynamo tracing without inductor codegen
    req = make_request(models["sd"], {"kind": "generate", "num_images": 1}, steps=2)
    model = AugmentModel(req, "cpu")
    assert model.speed_settings["channels_last"] is True
    assert model.speed_settings["compile"] == "eager"
    assert type(model.task_pipeline.unet).__name__ == "OptimizedModule"
    _, outs = _run(model)
    assert _size(outs[0].png) == (16, 16)


def test_dtype_per_device() -> None:
    from augflow.models.loading import default_dtype

    assert default_dtype("cuda") == torch.float16
    assert default_dtype("cpu") == torch.float32


# --- validation ----------------------------------------------------------------------------------


def test_upscaler_refuses_wrong_factor_and_other_operations(models) -> None:
    with pytest.raises(RequestError) as e:
        AugmentModel(make_request(models["x4"], {"kind": "upscale", "factor": 2}), "cpu")
    assert e.value.field == "operation.factor" and "x4" in str(e.value)
    with pytest.raises(ModelLoadError, match="only does operation 'upscale'"):
        AugmentModel(make_request(models["ldm"], {"kind": "denoise"}), "cpu")


def test_text_model_needs_class_names_for_labels(models) -> None:
    op = {"kind": "generate", "num_images": 2, "class_labels": [0, 1]}
    with pytest.raises(RequestError) as e:
        AugmentModel(make_request(models["sd"], op), "cpu")
    assert e.value.field == "operation.class_labels" and "class_names" in str(e.value)


def test_too_few_steps_for_the_strength_names_the_field(models) -> None:
    op = {"kind": "img2img", "strength": 0.1}
    with pytest.raises(RequestError) as e:
        AugmentModel(make_request(models["sd"], op, steps=4), "cpu")
    assert e.value.field == "operation.strength"


def test_pixel_unet_refuses_inpaint(tiny_model: Path, mask_file: Path) -> None:
    with pytest.raises(ModelLoadError, match="not supported"):
        AugmentModel(make_request(tiny_model, {"kind": "inpaint", "mask": str(mask_file)}), "cpu")


@pytest.mark.parametrize(
    ("op", "field", "words"),
    [
        (
            {"prompt_template": "a {thing}", "class_names": ["x"]},
            "operation.prompt_template",
            "{label}",
        ),
        ({"prompt_template": "a {label}"}, "operation", "needs class_names"),
        ({"class_names": ["a"], "class_labels": [3]}, "operation", "no entry in class_names"),
        ({"class_names": []}, "operation.class_names", "non-empty"),
        ({"class_names": ["a"], "prompts": ["b"]}, "operation", "not both"),
    ],
)
def test_generate_text_fields_are_validated(op, field, words) -> None:
    body = {
        "dataset": "d",
        "model": {"id": "m"},
        "operation": {"kind": "generate", "num_images": 1, **op},
    }
    with pytest.raises(RequestError) as e:
        parse_request(body)
    assert e.value.field == field and words in str(e.value)


def test_inpaint_needs_exactly_one_mask() -> None:
    base = {"dataset": "d", "model": {"id": "m"}, "inputs": "/x"}
    for op in ({"kind": "inpaint"}, {"kind": "inpaint", "mask": "a.png", "mask_column": "m"}):
        with pytest.raises(RequestError, match="exactly one of mask"):
            parse_request({**base, "operation": op})
    with pytest.raises(RequestError) as e:
        parse_request({**base, "operation": {"kind": "inpaint", "mask": "s3://k:s@b/m.png"}})
    assert e.value.field == "operation.mask"


def test_new_fields_leave_old_request_hashes_alone() -> None:
    req = parse_request(
        {"dataset": "d", "model": {"id": "m"}, "operation": {"kind": "generate", "num_images": 1}}
    )
    op = req.hashed_fields()["operation"]
    assert "class_names" not in op and "prompt_template" not in op
    with_names = req.model_copy(
        update={"operation": req.operation.model_copy(update={"class_names": ["a"]})}
    )
    assert with_names.request_hash != req.request_hash


# --- inpainting masks from a Parquet column -------------------------------------------------------


def test_inpaint_mask_column_from_parquet(models, tmp_path: Path) -> None:
    def png(img: Image.Image) -> bytes:
        buf = io.BytesIO()
        img.save(buf, format="PNG")
        return buf.getvalue()

    mask = Image.new("L", (20, 12), 0)
    mask.paste(255, (5, 3, 15, 9))
    table = pa.table(
        {
            "image": [{"bytes": png(_photo(seed=i)), "path": f"{i}.png"} for i in range(2)],
            "mask": [{"bytes": png(mask), "path": "m.png"}, {"bytes": b"", "path": "m.png"}],
        }
    )
    path = tmp_path / "in.parquet"
    pq.write_table(table, path)
    req = make_request(models["sd-inpaint"], {"kind": "inpaint", "mask_column": "mask"}, steps=2)
    model = AugmentModel(req, "cpu")
    items = [
        WorkItem(
            row_id=f"r{i}",
            source_id=f"in.parquet#{i}",
            source_uri=str(path),
            source_row=i,
            variant=0,
            seed=i,
        )
        for i in range(2)
    ]
    outs = model(items, [_photo(seed=0), _photo(seed=1)])
    assert outs[0].error is None and _size(outs[0].png) == (20, 12)
    assert outs[1].error is not None and "empty 'mask' cell" in outs[1].error  # row 1: no mask
    bad = make_request(models["sd-inpaint"], {"kind": "inpaint", "mask_column": "nope"}, steps=2)
    out = AugmentModel(bad, "cpu")(items[:1], [_photo()])
    assert "no column 'nope'" in out[0].error


# --- GPU safety nets, exercised on CPU ------------------------------------------------------------


class OOMOnce(torch.nn.Module):
    """A real UNet behind a wrapper that raises CUDA OOM the first time it sees a big batch."""

    def __init__(self, inner: torch.nn.Module, max_rows: int) -> None:
        super().__init__()
        self.inner = inner
        self.max_rows = max_rows
        self.raised = False
        self.rows: list[int] = []

    def forward(self, sample: torch.Tensor, *args, **kwargs):
        self.rows.append(sample.shape[0])
        if not self.raised and sample.shape[0] > self.max_rows:
            self.raised = True
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
        return self.inner(sample, *args, **kwargs)

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self.inner, name)


def test_cuda_oom_halves_the_batch_and_retries(models) -> None:
    req = make_request(
        models["sd"],
        {"kind": "generate", "num_images": 4},
        steps=2,
        guidance_scale=0.0,  # no classifier-free guidance: UNet rows == images
        execution={"batch_size": 4},
    )
    model = AugmentModel(req, "cpu", batch_invariant=False)
    assert model.max_batch == 4
    wrapper = OOMOnce(model.task_pipeline.unet, max_rows=2)
    model.task_pipeline.unet = wrapper
    items, outs = _run(model)
    assert len(outs) == 4 and all(_size(o.png) == (16, 16) for o in outs)
    assert wrapper.raised and wrapper.rows[0] == 4
    assert set(wrapper.rows[1:]) == {2}  # every later call used the halved batch
    assert model.max_batch == 2
    more = model(items, [None] * 4)  # the next batch starts at the lowered size
    assert [o.error for o in more] == [None] * 4 and set(wrapper.rows[1:]) == {2}


def test_x4_upscaler_tiles_a_large_input(models, monkeypatch) -> None:
    monkeypatch.setenv("AUGFLOW_UPSCALE_TILE", "16")
    monkeypatch.setenv("AUGFLOW_UPSCALE_OVERLAP", "4")
    model = AugmentModel(
        make_request(models["x4"], {"kind": "upscale", "factor": 4}, steps=1), "cpu"
    )
    pipe = model.task_pipeline
    assert pipe.vae.use_tiling  # the VAE tiles too
    seen: list[tuple[int, ...]] = []
    pipe.unet.register_forward_pre_hook(lambda _m, args: seen.append(tuple(args[0].shape)))
    decoded: list[tuple[int, ...]] = []
    pipe.vae.decoder.register_forward_pre_hook(
        lambda _m, args: decoded.append(tuple(args[0].shape))
    )
    big = _photo(w=28, h=20, seed=3)
    items = items_for(model.request, 1)
    out = model(items, [big])[0]
    assert out.error is None and _size(out.png) == (112, 80)
    # the UNet never saw more than one 16x16 low-res tile, the decoder never a whole image
    assert max(s[-1] for s in seen) <= 16 and max(s[-2] for s in seen) <= 16
    assert len(seen) == 2 * 3  # 1 step x tiles (2 rows x 3 columns of tiles), one at a time
    assert max(s[-1] for s in decoded) < 28 and max(s[-2] for s in decoded) < 20
    # seamless enough to still be the same picture: faithful to the input at its own scale
    assert out.metrics["faithfulness_psnr"] is not None


def test_auto_batch_size_follows_resolution_and_memory() -> None:
    from augflow.models.speed import MAX_AUTO_BATCH, auto_batch_size

    gib = 1024**3
    sd15 = auto_batch_size(64 * 64, free_bytes=70 * gib)  # 512² SD-1.5 on an 80 GB card
    assert 16 <= sd15 <= MAX_AUTO_BATCH
    assert auto_batch_size(128 * 128, free_bytes=70 * gib) < sd15  # 1024²: fewer at once
    assert auto_batch_size(64 * 64, free_bytes=8 * gib) < sd15  # a smaller card: fewer
    assert auto_batch_size(64 * 64, free_bytes=1) == 1  # never zero
    assert auto_batch_size(4, free_bytes=70 * gib) == MAX_AUTO_BATCH  # capped
