"""Loading through the same from_pretrained path as real models; safety refusals."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from augflow.models.loading import (
    AUGFLOW_PIPELINES,
    SCHEDULER_CLASSES,
    folder_digest,
    load_pipeline,
)
from augflow.schemas import ModelLoadError, ModelSpec


def test_loads_a_local_folder(ddpm_dir: Path) -> None:
    loaded = load_pipeline(ModelSpec(id=str(ddpm_dir)), "auto")
    assert type(loaded.pipeline).__name__ == "DDPMPipeline"
    assert loaded.model_id == str(ddpm_dir)
    assert loaded.revision.startswith("sha256:") and len(loaded.revision) == len("sha256:") + 12
    assert loaded.scheduler_name == "ddpm"
    assert loaded.device == "cpu" and loaded.dtype == torch.float32
    assert loaded.pipeline.unet.dtype == torch.float32


def test_digest_is_stable_and_tracks_content(tmp_path: Path, ddpm_dir: Path) -> None:
    from dummy_models import make_tiny_ddpm

    same = make_tiny_ddpm(tmp_path / "same")  # same seed, other folder: same content
    other = make_tiny_ddpm(tmp_path / "other", seed=1)
    assert folder_digest(ddpm_dir) == folder_digest(ddpm_dir) == folder_digest(same)
    assert folder_digest(other) != folder_digest(ddpm_dir)
    cfg = same / "scheduler" / "scheduler_config.json"
    data = json.loads(cfg.read_text())
    data["beta_end"] = 0.03
    cfg.write_text(json.dumps(data))
    assert folder_digest(same) != folder_digest(ddpm_dir)


def test_digest_changes_when_one_weight_changes(tmp_path: Path, ddpm_dir: Path) -> None:
    from safetensors.torch import load_file, save_file

    copy = tmp_path / "copy"
    shutil.copytree(ddpm_dir, copy)
    weights = copy / "unet" / "diffusion_pytorch_model.safetensors"
    tensors = load_file(weights)
    name = sorted(tensors)[0]
    tensors[name] = tensors[name].clone()
    tensors[name].view(-1)[0] += 1.0
    save_file(tensors, weights, metadata={"format": "pt"})
    assert folder_digest(copy) != folder_digest(ddpm_dir)


def test_pickle_only_is_refused(tmp_path: Path) -> None:
    from dummy_models import make_pickle_only_model

    folder = make_pickle_only_model(tmp_path / "pickled")
    with pytest.raises(ModelLoadError) as exc:
        load_pipeline(ModelSpec(id=str(folder)), "cpu")
    msg = str(exc.value)
    assert str(folder) in msg
    assert "safetensors" in msg and "diffusion_pytorch_model.bin" in msg


def test_missing_local_path(tmp_path: Path) -> None:
    missing = tmp_path / "no" / "such-model"
    with pytest.raises(ModelLoadError, match="does not exist") as exc:
        load_pipeline(ModelSpec(id=str(missing)), "cpu")
    assert str(missing) in str(exc.value)


def test_folder_without_model_index(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match=r"model_index\.json"):
        load_pipeline(ModelSpec(id=str(tmp_path)), "cpu")


def test_hub_id_offline_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(ModelLoadError, match=r"hub is unreachable.*local diffusers folder"):
        load_pipeline(ModelSpec(id="augflow-test/not-a-real-model"), "cpu")


def test_unknown_pipeline_class_is_not_imported(tmp_path: Path, ddpm_dir: Path) -> None:
    copy = tmp_path / "custom"
    shutil.copytree(ddpm_dir, copy)
    index = json.loads((copy / "model_index.json").read_text())
    index["_class_name"] = "EvilPipeline"
    (copy / "model_index.json").write_text(json.dumps(index))
    with pytest.raises(ModelLoadError, match="custom pipeline code is never loaded"):
        load_pipeline(ModelSpec(id=str(copy)), "cpu")


def test_foreign_component_library_is_refused(tmp_path: Path, ddpm_dir: Path) -> None:
    copy = tmp_path / "foreign"
    shutil.copytree(ddpm_dir, copy)
    index = json.loads((copy / "model_index.json").read_text())
    index["unet"] = ["os", "system"]
    (copy / "model_index.json").write_text(json.dumps(index))
    with pytest.raises(ModelLoadError, match="library 'os'"):
        load_pipeline(ModelSpec(id=str(copy)), "cpu")


@pytest.mark.parametrize(
    ("edit", "words"),
    [
        (lambda i: ["not", "an", "object"], "must be a JSON object"),
        (lambda i: "DDPMPipeline", "must be a JSON object"),
        (lambda i: {**i, "_class_name": ["DDPMPipeline"]}, "field `_class_name` must be"),
        (lambda i: {**i, "_class_name": 7}, "field `_class_name` must be"),
        (lambda i: {k: v for k, v in i.items() if k != "_class_name"}, "`_class_name`"),
        (lambda i: {k: v for k, v in i.items() if k != "unet"}, "has no `unet` component"),
        (lambda i: {**i, "unet": ["diffusers"]}, "field `unet` must be"),
        (lambda i: {**i, "unet": {"library": "diffusers"}}, "field `unet` must be"),
        (lambda i: {**i, "unet": [1, 2]}, "field `unet` must be"),
        (lambda i: {**i, "unet": [None, None]}, "field `unet` is empty"),
        (lambda i: {**i, "scheduler": ["diffusers", "NoSuchScheduler"]}, "could not be loaded"),
    ],
)
def test_a_malformed_model_index_is_refused_by_field(
    tmp_path: Path, ddpm_dir: Path, edit, words: str
) -> None:
    copy = tmp_path / "bad-index"
    shutil.copytree(ddpm_dir, copy)
    index = json.loads((copy / "model_index.json").read_text())
    (copy / "model_index.json").write_text(json.dumps(edit(index)))
    with pytest.raises(ModelLoadError) as err:
        load_pipeline(ModelSpec(id=str(copy)), "cpu")
    assert words in str(err.value) and "model_index.json" in str(err.value)


def test_a_malformed_component_config_is_a_refusal(tmp_path: Path, ddpm_dir: Path) -> None:
    copy = tmp_path / "bad-config"
    shutil.copytree(ddpm_dir, copy)
    config = json.loads((copy / "unet" / "config.json").read_text())
    config["block_out_channels"] = "wide"
    (copy / "unet" / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelLoadError, match="could not be loaded"):
        load_pipeline(ModelSpec(id=str(copy)), "cpu")


def test_sr3_is_registered_lazily() -> None:
    assert AUGFLOW_PIPELINES["SR3Pipeline"] == "augflow.models.sr3:SR3Pipeline"


@pytest.mark.parametrize("name", list(SCHEDULER_CLASSES))
def test_scheduler_swap(ddpm_dir: Path, name: str) -> None:
    loaded = load_pipeline(ModelSpec(id=str(ddpm_dir), scheduler=name), "cpu")
    assert type(loaded.pipeline.scheduler).__name__ == SCHEDULER_CLASSES[name]
    assert loaded.scheduler_name == name
    assert loaded.pipeline.scheduler.config.num_train_timesteps == 100  # config carried over


def test_only_sr3_is_built_in_and_registration_is_checked(monkeypatch) -> None:
    from diffusers import DiffusionPipeline, StableDiffusionPipeline

    import augflow.models.loading as loading
    from augflow.models.loading import register_pipeline_class

    assert list(AUGFLOW_PIPELINES) == ["SR3Pipeline"]  # the benchmark fake lives in bench/
    monkeypatch.setattr(loading, "_registered_pipelines", {})

    class Mine(DiffusionPipeline):
        pass

    class Other(DiffusionPipeline):
        pass

    with pytest.raises(TypeError, match="not a diffusers DiffusionPipeline"):
        register_pipeline_class("Mine", dict)  # type: ignore[arg-type]  # the wrong type is the point
    for taken in ("SR3Pipeline", "StableDiffusionPipeline"):
        with pytest.raises(ValueError, match="is taken"):
            register_pipeline_class(taken, StableDiffusionPipeline)
    register_pipeline_class("Mine", Mine)
    register_pipeline_class("Mine", Mine)  # the same class again is fine (worker re-imports)
    with pytest.raises(ValueError, match="already registered"):
        register_pipeline_class("Mine", Other)
    assert loading.resolve_pipeline_class("Mine", "here") is Mine


def test_dtype_per_device() -> None:
    from augflow.models.loading import default_dtype

    assert default_dtype("cuda") == torch.float16
    assert default_dtype("cpu") == torch.float32
