"""Load a diffusers pipeline safely: safetensors only, no remote code, revision recorded.

A model is a local diffusers folder (``model_index.json`` + component folders) or a hub id. Local
folders are never sent to the hub; a hub id is only contacted when the user names one.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from augflow.models.bundled_ids import local_model_path
from augflow.schemas.errors import ModelLoadError
from augflow.schemas.request import ModelSpec

if TYPE_CHECKING:
    from diffusers import DiffusionPipeline

#: augflow's own pipeline classes, resolved lazily so a missing module only matters when used.
AUGFLOW_PIPELINES: dict[str, str] = {
    "SR3Pipeline": "augflow.models.sr3:SR3Pipeline",
}

#: Pipeline classes a process registered with :func:`register_pipeline_class` (e.g. the
#: benchmarks' fake model); empty unless someone registers one.
_registered_pipelines: dict[str, type[DiffusionPipeline]] = {}

#: Short scheduler names of the request -> diffusers class names.
SCHEDULER_CLASSES: dict[str, str] = {
    "ddpm": "DDPMScheduler",
    "ddim": "DDIMScheduler",
    "dpm++": "DPMSolverMultistepScheduler",
    "euler": "EulerDiscreteScheduler",
    "euler_a": "EulerAncestralDiscreteScheduler",
    "heun": "HeunDiscreteScheduler",
    "lms": "LMSDiscreteScheduler",
    "pndm": "PNDMScheduler",
    "unipc": "UniPCMultistepScheduler",
}

#: Libraries a model_index.json may name for its components; anything else could import
#: arbitrary code by name, so it is refused.
ALLOWED_COMPONENT_LIBRARIES = ("diffusers", "transformers")

PICKLE_SUFFIXES = (".bin", ".ckpt", ".pt", ".pth", ".pkl")
DIGEST_CONTENT_LIMIT = 512 * 1024 * 1024
_DIGEST_SUFFIXES = (".json", ".txt", ".safetensors")
_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*$")


@dataclass
class LoadedPipeline:
    pipeline: Any
    model_id: str
    revision: str
    scheduler_name: str
    device: str
    dtype: torch.dtype


def resolve_device(device: str) -> str:
    """ "auto" -> cuda when available, else cpu."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ModelLoadError(
            f"device {device!r} was requested but no CUDA device is visible; use device 'auto' or 'cpu'"
        )
    return device


def default_dtype(device: str) -> torch.dtype:
    # fp16 halves memory and is what the GPU kernels are fast at; CPU has no fast fp16 path.
    return torch.float16 if device.startswith("cuda") else torch.float32


def looks_like_hub_id(model_id: str) -> bool:
    return bool(_HUB_ID.match(model_id)) and not model_id.startswith((".", "~"))


def load_pipeline(
    spec: ModelSpec, device: str = "auto", dtype: torch.dtype | None = None
) -> LoadedPipeline:
    """Load ``spec`` onto ``device`` and swap its scheduler if the spec names one."""
    device = resolve_device(device)
    dtype = dtype or default_dtype(device)
    path = local_model_path(spec.id)
    if path.exists():
        folder = _check_local_folder(path)
        revision = folder_digest(folder)
        pipe = _from_pretrained(folder, _read_index(folder), str(folder), dtype, local=True)
    elif looks_like_hub_id(spec.id):
        index = _hub_model_index(spec)
        revision = spec.revision or "unpinned"
        pipe = _from_pretrained(spec.id, index, spec.id, dtype, local=False, revision=spec.revision)
    else:
        raise ModelLoadError(
            f"model {spec.id!r} does not exist as a local folder and is not a hub id "
            "(owner/name); pass the path of a diffusers pipeline folder (with model_index.json)"
        )
    pipe = pipe.to(device)
    if hasattr(pipe, "set_progress_bar_config"):
        pipe.set_progress_bar_config(disable=True)
    scheduler_name = swap_scheduler(pipe, spec.scheduler)
    return LoadedPipeline(pipe, spec.id, revision, scheduler_name, device, dtype)


# --- local folders -----------------------------------------------------------------------------


def _check_local_folder(path: Path) -> Path:
    if not path.is_dir():
        raise ModelLoadError(
            f"model path {str(path)!r} is a file; pass the diffusers pipeline folder that holds "
            "model_index.json"
        )
    if not (path / "model_index.json").is_file():
        raise ModelLoadError(
            f"model folder {str(path)!r} has no model_index.json, so it is not a diffusers "
            "pipeline folder; save the pipeline with save_pretrained() and pass that folder"
        )
    index = _read_index(path)
    for component in _components(index):
        sub = path / component
        if not sub.is_dir():
            continue
        files = [p for p in sub.rglob("*") if p.is_file()]
        has_safe = any(p.suffix == ".safetensors" for p in files)
        pickles = sorted(p.name for p in files if p.suffix in PICKLE_SUFFIXES)
        if pickles and not has_safe:
            raise ModelLoadError(
                f"model folder {str(path)!r}: component {component!r} has only pickle weights "
                f"({', '.join(pickles)}), which can run code when loaded; convert them to "
                "safetensors (load once in a trusted environment and save_pretrained(..., "
                "safe_serialization=True)) and pass the converted folder"
            )
    return path


def _read_index(folder: Path) -> dict[str, Any]:
    try:
        index = json.loads((folder / "model_index.json").read_text())
    except (OSError, ValueError, RecursionError) as exc:
        raise ModelLoadError(f"{folder}/model_index.json cannot be read as JSON: {exc}") from None
    return check_index(index, f"{folder}/model_index.json")


def check_index(index: Any, where: str) -> dict[str, Any]:
    """``index`` if it has the shape of a diffusers model_index.json, else a ModelLoadError naming
    the field: a JSON object whose ``_class_name`` is the pipeline class name."""
    if not isinstance(index, dict):
        raise ModelLoadError(
            f"{where} must be a JSON object naming the pipeline class and its components, "
            f"not a JSON {type(index).__name__}"
        )
    name = index.get("_class_name")
    if not isinstance(name, str) or not name.strip():
        got = "missing" if name is None else f"{type(name).__name__} {json.dumps(name)[:80]}"
        raise ModelLoadError(
            f"{where}: field `_class_name` must be the pipeline class name as a string "
            f'(e.g. "DDIMPipeline"); it is {got}'
        )
    return index


def _check_components(cls: type, index: dict[str, Any], where: str) -> None:
    """Every component the pipeline class takes is named as ``[library, ClassName]`` (or
    ``[null, null]`` for an optional one), so a malformed entry is refused by name here rather than
    as an error from deep inside ``from_pretrained``."""
    signature_keys = getattr(cls, "_get_signature_keys", None)
    if signature_keys is None:
        return
    expected, _ = signature_keys(cls)
    optional = set(getattr(cls, "_optional_components", None) or [])
    for comp in expected:
        value = index.get(comp)
        if value is None:
            if comp in optional:
                continue
            raise ModelLoadError(
                f"{where}: model_index.json has no `{comp}` component, which {cls.__name__} "
                f'needs (as ["library", "ClassName"])'
            )
        ok = (
            isinstance(value, list)
            and len(value) == 2
            and all(x is None or isinstance(x, str) for x in value)
            and (value[0] is None) == (value[1] is None)
        )
        if not ok:
            raise ModelLoadError(
                f'{where}: model_index.json field `{comp}` must be ["library", "ClassName"]; '
                f"it is {json.dumps(value)[:80]}"
            )
        if value[0] is None and comp not in optional:
            raise ModelLoadError(
                f"{where}: model_index.json field `{comp}` is empty, but {cls.__name__} needs it"
            )


def _components(index: dict[str, Any]) -> list[str]:
    return [
        k
        for k, v in index.items()
        # components are ["library", "ClassName"]; config values may also be 2-lists (of numbers)
        if not k.startswith("_")
        and isinstance(v, list)
        and len(v) == 2
        and all(isinstance(x, str) for x in v)
    ]


def folder_digest(folder: Path) -> str:
    """``sha256:<12 hex>`` of the files that decide the model's behaviour.

    Whole-file content is hashed when the total is under 512 MB; above that, names and sizes only
    (hashing many GB at every actor start costs minutes), which still catches re-saved weights of a
    different size but not an in-place edit of equal size.
    """
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix in _DIGEST_SUFFIXES)
    total = sum(p.stat().st_size for p in files)
    h = hashlib.sha256()
    for p in files:
        rel = p.relative_to(folder).as_posix()
        h.update(f"{rel}\0{p.stat().st_size}\0".encode())
        if total < DIGEST_CONTENT_LIMIT:
            with p.open("rb") as f:
                while chunk := f.read(1 << 20):
                    h.update(chunk)
    return f"sha256:{h.hexdigest()[:12]}"


# --- hub -----------------------------------------------------------------------------------------


def _hub_model_index(spec: ModelSpec) -> dict[str, Any]:
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import (
        EntryNotFoundError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    unreachable = (
        f"model {spec.id!r} looks like a hub id but the Hugging Face hub is unreachable "
        "(offline, or HF_HUB_OFFLINE is set) and it is not in the local cache; pass a local "
        "diffusers folder instead"
    )
    try:
        index_file = hf_hub_download(spec.id, "model_index.json", revision=spec.revision)
    except LocalEntryNotFoundError:
        raise ModelLoadError(unreachable) from None
    except RepositoryNotFoundError:
        raise ModelLoadError(
            f"model {spec.id!r} is neither a local folder nor a hub repository you can read; "
            "check the spelling, or log in (HF_TOKEN in the environment) for a private model"
        ) from None
    except RevisionNotFoundError:
        raise ModelLoadError(f"model {spec.id!r} has no revision {spec.revision!r}") from None
    except EntryNotFoundError:
        raise ModelLoadError(
            f"hub model {spec.id!r} has no model_index.json; it is not a diffusers pipeline"
        ) from None
    except OSError as exc:  # connection errors (requests/httpx) subclass OSError or wrap in it
        raise ModelLoadError(f"{unreachable} ({type(exc).__name__})") from None
    try:
        index = json.loads(Path(index_file).read_text())
    except (OSError, ValueError, RecursionError) as exc:
        raise ModelLoadError(
            f"hub model {spec.id!r}: model_index.json is not JSON: {exc}"
        ) from None
    return check_index(index, f"hub model {spec.id!r}: model_index.json")


# --- classes and loading -------------------------------------------------------------------------


def register_pipeline_class(name: str, cls: type[DiffusionPipeline]) -> None:
    """Let model folders whose model_index.json names ``name`` load as ``cls``.

    For pipeline classes augflow does not ship (a benchmark's fake, a project's own pipeline):
    code is only ever loaded from classes a process registered itself, never from the model
    folder. ``cls`` must be a ``DiffusionPipeline`` subclass and ``name`` must not shadow a
    diffusers or built-in augflow class. Registration is per process: in a Ray cluster it has to
    happen in every worker too. A runner family for it is registered separately
    (:func:`augflow.models.runner.register_family`).
    """
    import diffusers
    from diffusers import DiffusionPipeline

    if not (isinstance(cls, type) and issubclass(cls, DiffusionPipeline)):
        raise TypeError(f"{cls!r} is not a diffusers DiffusionPipeline subclass")
    if name in AUGFLOW_PIPELINES or hasattr(diffusers, name):
        raise ValueError(f"pipeline class name {name!r} is taken by diffusers or augflow")
    known = _registered_pipelines.get(name)
    if known is not None and known is not cls:
        raise ValueError(f"pipeline class name {name!r} is already registered as {known!r}")
    _registered_pipelines[name] = cls


def resolve_pipeline_class(class_name: str | None, where: str) -> type[DiffusionPipeline]:
    """The pipeline class named by model_index.json: a diffusers class, an augflow one, or one
    this process registered."""
    from diffusers import DiffusionPipeline

    if not isinstance(class_name, str) or not class_name:
        raise ModelLoadError(f"{where}: model_index.json field `_class_name` must be a string")
    if class_name in _registered_pipelines:
        return _registered_pipelines[class_name]
    if class_name in AUGFLOW_PIPELINES:
        module_name, _, attr = AUGFLOW_PIPELINES[class_name].partition(":")
        try:
            cls = getattr(importlib.import_module(module_name), attr)
        except (ImportError, AttributeError) as exc:
            raise ModelLoadError(
                f"{where}: pipeline class {class_name} needs {module_name}, which cannot be "
                f"imported ({exc}); install augflow with its models package"
            ) from None
        return cls
    import diffusers

    cls = getattr(diffusers, class_name, None)
    if not (isinstance(cls, type) and issubclass(cls, DiffusionPipeline)):
        raise ModelLoadError(
            f"{where}: pipeline class {class_name!r} is neither a diffusers pipeline nor one of "
            f"augflow's ({', '.join([*AUGFLOW_PIPELINES, *_registered_pipelines])}); custom "
            "pipeline code is never loaded from a model folder"
        )
    return cls


def _check_component_libraries(index: dict[str, Any], where: str) -> None:
    for comp in _components(index):
        library = index[comp][0]
        if library in ALLOWED_COMPONENT_LIBRARIES or str(library).startswith("augflow."):
            continue
        raise ModelLoadError(
            f"{where}: component {comp!r} comes from library {library!r}; only "
            f"{', '.join(ALLOWED_COMPONENT_LIBRARIES)} and augflow components are loaded "
            "(no remote or custom code)"
        )


def _from_pretrained(
    source: str | Path,
    index: dict[str, Any],
    where: str,
    dtype: torch.dtype,
    *,
    local: bool,
    revision: str | None = None,
) -> Any:
    cls = resolve_pipeline_class(index.get("_class_name"), where)
    _check_components(cls, index, where)
    _check_component_libraries(index, where)
    kwargs: dict[str, Any] = {"use_safetensors": True, "dtype": dtype}
    if importlib.util.find_spec("accelerate") is None:
        # Without accelerate diffusers falls back anyway, but warns at every actor start.
        kwargs["low_cpu_mem_usage"] = False
    if local:
        kwargs["local_files_only"] = True
    else:
        kwargs["revision"] = revision
    from diffusers.utils import logging as dlogging

    bars = dlogging.is_progress_bar_enabled()
    dlogging.disable_progress_bar()  # one bar per actor start is noise in worker logs
    try:
        return cls.from_pretrained(str(source), **kwargs)
    except ModelLoadError:
        raise
    except (OSError, ValueError, TypeError, AttributeError, KeyError, IndexError) as exc:
        # A model folder is user data: a malformed component config surfaces from diffusers as
        # any of these, and is a refusal of that model, not a crash.
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        if "safetensors" in msg.lower() or "pytorch_model.bin" in msg:
            raise ModelLoadError(
                f"{where}: no safetensors weights could be loaded ({msg}); convert the model to "
                "safetensors (save_pretrained(..., safe_serialization=True))"
            ) from None
        if not isinstance(exc, (OSError, ValueError)):
            msg = f"{type(exc).__name__}: {msg}"
        raise ModelLoadError(f"{where}: the pipeline could not be loaded: {msg}") from None
    finally:
        if bars:
            dlogging.enable_progress_bar()


def swap_scheduler(pipe: Any, name: str | None) -> str:
    """Replace ``pipe.scheduler`` by the named one (same config); return the scheduler's short name."""
    import diffusers

    current = getattr(pipe, "scheduler", None)
    if name is None:
        cls_name = type(current).__name__ if current is not None else "none"
        short = {v: k for k, v in SCHEDULER_CLASSES.items()}
        return short.get(cls_name, cls_name)
    if name not in SCHEDULER_CLASSES:
        raise ModelLoadError(
            f"unknown scheduler {name!r}; choose one of {', '.join(SCHEDULER_CLASSES)}"
        )
    if current is None:
        raise ModelLoadError(
            f"this pipeline ({type(pipe).__name__}) has no scheduler to swap; remove model.scheduler"
        )
    cls = getattr(diffusers, SCHEDULER_CLASSES[name])
    pipe.scheduler = cls.from_config(current.config)
    return name
