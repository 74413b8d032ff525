"""Preflight: what must hold before Ray starts, checked in seconds.

A run against a read-only output root, unreadable inputs or a model that cannot load would
otherwise start Ray, load the model on every actor and fail there, slowly and with retries. So the
CLI (before Prefect starts) and the flow (before :func:`augflow.tasks.execute.execute_plan` starts
Ray, so deployments get it too) call :func:`preflight`, which checks:

* **the output root is writable**: a probe object is written under ``.preflight/`` and removed;
* **the inputs are readable**: one object of the folder/prefix (or the file) is read, or the
  registered ``name@version`` resolves;
* **the model is loadable, without loading it**: ``model_index.json`` parses, every component
  listed in it has its folder, every component with weights (a ``config.json``) has them as
  safetensors whose headers and sizes are intact, and none is pickle-only. A hub id must resolve
  (from the cache when offline).

It also sweeps what killed runs left behind for this request (local temp files, S3 in-flight
multipart uploads) once they are older than :data:`LITTER_AGE_S`.

Failures raise the error a worker would have raised (:class:`StoragePermissionError`,
:class:`InputError`, :class:`ModelLoadError`, ...), naming the URI, file or field. Nothing here
imports torch or diffusers: the driver stays light.
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
import uuid
from pathlib import Path
from typing import Any

from augflow.models.bundled_ids import local_model_path
from augflow.schemas.errors import InputError, ModelLoadError, StorageError
from augflow.schemas.request import AugmentRequest, ModelSpec
from augflow.tasks import layout
from augflow.tasks.storage import Storage, filesystem_for, normalize_uri, with_retries

log = logging.getLogger(__name__)

#: leftovers of killed writes older than this are swept; live writes finish well within it
LITTER_AGE_S = 3600.0
PICKLE_SUFFIXES = (".bin", ".ckpt", ".pt", ".pth", ".pkl")
_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*$")
# A safetensors header is JSON; a few MB is already huge. A larger length means a damaged file.
_MAX_SAFETENSORS_HEADER = 100 * 2**20


def preflight(request: AugmentRequest) -> None:
    """Check output root, inputs and model; sweep old litter. Raises on the first problem."""
    start = time.perf_counter()
    check_output_writable(request.output)
    check_inputs_readable(request)
    check_model(request.model)
    sweep_litter(request)
    log.debug("preflight passed in %.2fs", time.perf_counter() - start)


# --- output -------------------------------------------------------------------------------------


def check_output_writable(output: str) -> None:
    """Write a probe object under the output root and remove it."""
    storage = Storage(output)
    key = layout.preflight_probe(uuid.uuid4().hex)
    try:
        storage.write_bytes(key, b"augflow preflight probe; safe to delete\n")
    except StorageError as exc:
        raise type(exc)(
            f"preflight: the output root {storage.root} is not writable: {exc}"
        ) from None
    try:
        storage.delete(key)
    except StorageError as exc:
        # Writing is what a run needs; a store that allows writes but not deletes is usable.
        log.warning("preflight: could not remove the probe %s (%s)", storage.uri(key), exc)


# --- inputs -------------------------------------------------------------------------------------


def check_inputs_readable(request: AugmentRequest) -> None:
    """One object of the inputs is readable (a registered input must resolve)."""
    ref = request.input_ref()
    if ref is not None:
        from augflow.tasks.register import get_version

        get_version(Storage(request.output), *ref)  # VersionNotFoundError names what exists
        return
    if not request.inputs:
        return  # generate: no inputs
    uri = normalize_uri(request.inputs)
    fs, path = filesystem_for(uri)
    try:
        sample = _first_object(fs, path)
        if sample is None:
            raise InputError(
                f"inputs {request.inputs!r} does not exist or holds no files; give a folder, "
                "prefix or file of images or Parquet files"
            )
        with_retries("read", uri, lambda: _read_first_byte(fs, sample))
    except InputError:
        raise
    except (StorageError, OSError) as exc:
        raise InputError(f"preflight: inputs {request.inputs!r} cannot be read: {exc}") from None


def _first_object(fs: Any, path: str) -> str | None:
    """The path of one object at or below ``path`` (None when there is none), cheaply: a local
    walk stops at the first file; on S3 one LIST with MaxKeys=1."""
    if fs.isfile(path):
        return str(path)
    if hasattr(fs, "call_s3"):
        bucket, key, _ = fs.split_path(path)
        prefix = key.rstrip("/") + "/" if key else ""
        out = fs.call_s3("list_objects_v2", Bucket=bucket, Prefix=prefix, MaxKeys=1)
        contents = out.get("Contents") or []
        return f"{bucket}/{contents[0]['Key']}" if contents else None
    if not os.path.isdir(path):
        return None
    for dirpath, _dirs, files in os.walk(path):
        for name in sorted(files):
            return os.path.join(dirpath, name)
    return None


def _read_first_byte(fs: Any, path: str) -> None:
    if hasattr(fs, "call_s3"):
        bucket, key, _ = fs.split_path(path)
        fs.call_s3("get_object", Bucket=bucket, Key=key, Range="bytes=0-0")["Body"].close()
        return
    with open(path, "rb") as f:
        f.read(1)


# --- model --------------------------------------------------------------------------------------


def check_model(spec: ModelSpec) -> None:
    """The model can be loaded safely, judged from its files without loading any weights."""
    path = local_model_path(spec.id)
    if path.exists():
        check_model_folder(path)
    elif _HUB_ID.match(spec.id) and not spec.id.startswith((".", "~")):
        _check_hub_model(spec)
    else:
        raise ModelLoadError(
            f"model {spec.id!r} does not exist as a local folder and is not a hub id "
            "(owner/name); pass the path of a diffusers pipeline folder (with model_index.json)"
        )


def check_model_folder(folder: Path) -> None:
    """A local diffusers folder: index, component folders, safetensors weights."""
    where = str(folder)
    if not folder.is_dir():
        raise ModelLoadError(
            f"model path {where!r} is a file; pass the diffusers pipeline folder that holds "
            "model_index.json"
        )
    index_file = folder / "model_index.json"
    if not index_file.is_file():
        raise ModelLoadError(
            f"model folder {where!r} has no model_index.json, so it is not a diffusers "
            "pipeline folder; save the pipeline with save_pretrained() and pass that folder"
        )
    index = _parse_index(index_file.read_bytes(), str(index_file))
    for name in _components(index, str(index_file)):
        sub = folder / name
        if not sub.is_dir():
            raise ModelLoadError(
                f"model folder {where!r}: component {name!r} is listed in model_index.json but "
                f"has no folder {name}/; the model was saved incompletely"
            )
        _check_component(sub, name, where)


def _parse_index(raw: bytes, where: str) -> dict[str, Any]:
    try:
        index = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelLoadError(f"{where} cannot be read as JSON: {exc}") from None
    if not isinstance(index, dict):
        raise ModelLoadError(f"{where} must hold a JSON object, not {type(index).__name__}")
    cls = index.get("_class_name")
    if not isinstance(cls, str) or not cls:
        raise ModelLoadError(
            f"{where}: field `_class_name` must be the pipeline class name (a string), not {cls!r}"
        )
    return index


def _components(index: dict[str, Any], where: str) -> list[str]:
    """Component names: entries ``name: [library, ClassName]`` (``[null, null]`` = absent)."""
    names = []
    for key, value in index.items():
        if key.startswith("_") or not isinstance(value, list) or len(value) != 2:
            continue
        if value == [None, None]:
            continue
        if not all(isinstance(v, str) for v in value):
            if all(isinstance(v, int | float) for v in value):
                continue  # a config value that happens to be a pair of numbers
            raise ModelLoadError(
                f"{where}: field `{key}` must be [library, ClassName] (two strings), not {value!r}"
            )
        names.append(key)
    return names


def _check_component(sub: Path, name: str, where: str) -> None:
    files = [p for p in sub.rglob("*") if p.is_file()]
    safe = [p for p in files if p.name.endswith(".safetensors")]
    pickles = sorted(p.name for p in files if p.suffix in PICKLE_SUFFIXES)
    if pickles and not safe:
        raise ModelLoadError(
            f"model folder {where!r}: component {name!r} has only pickle weights "
            f"({', '.join(pickles)}), which can run code when loaded; convert them to "
            "safetensors (load once in a trusted environment and save_pretrained(..., "
            "safe_serialization=True)) and pass the converted folder"
        )
    # A component with a config.json is a model (diffusers ModelMixin or transformers): it has
    # weights. Schedulers, tokenizers and feature extractors have other config names and none.
    if (sub / "config.json").is_file() and not safe:
        raise ModelLoadError(
            f"model folder {where!r}: component {name!r} has no safetensors weights; save the "
            "model with save_pretrained(..., safe_serialization=True)"
        )
    for index_file in sub.glob("*.safetensors.index.json"):
        _check_shard_index(index_file, where)
    for p in safe:
        _check_safetensors(p, where)


def _check_shard_index(index_file: Path, where: str) -> None:
    try:
        weight_map = json.loads(index_file.read_text()).get("weight_map") or {}
    except (OSError, ValueError, AttributeError) as exc:
        raise ModelLoadError(f"{where}: {index_file.name} cannot be read: {exc}") from None
    for shard in sorted(set(weight_map.values())):
        if not (index_file.parent / str(shard)).is_file():
            raise ModelLoadError(
                f"{where}: {index_file.parent.name}/{index_file.name} names the weight file "
                f"{shard}, which is missing"
            )


def _check_safetensors(path: Path, where: str) -> None:
    """The file's header parses and the tensors it declares fit in the file (not truncated)."""
    rel = f"{path.parent.name}/{path.name}"
    size = path.stat().st_size
    try:
        with path.open("rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise ValueError(f"{size} bytes, too short for a header")
            length = int.from_bytes(head, "little")
            if length > min(size - 8, _MAX_SAFETENSORS_HEADER):
                raise ValueError(f"header length {length} does not fit in {size} bytes")
            header = json.loads(f.read(length))
        end = 0
        for name, tensor in header.items():
            if name != "__metadata__":
                end = max(end, int(tensor["data_offsets"][1]))
    except (ValueError, KeyError, TypeError, IndexError, OSError) as exc:
        raise ModelLoadError(
            f"{where}: weights {rel} are not a readable safetensors file ({exc}); re-save the model"
        ) from None
    if 8 + length + end > size:
        raise ModelLoadError(
            f"{where}: weights {rel} are truncated: the tensors need {8 + length + end} bytes, "
            f"the file has {size}; copy or save the model again"
        )


def _check_hub_model(spec: ModelSpec) -> None:
    """A hub id: its model_index.json resolves (cache first; the hub only when online)."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import (
        EntryNotFoundError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    try:
        index_file = hf_hub_download(spec.id, "model_index.json", revision=spec.revision)
    except LocalEntryNotFoundError:
        raise ModelLoadError(
            f"model {spec.id!r} looks like a hub id but the Hugging Face hub is unreachable "
            "(offline, or HF_HUB_OFFLINE is set) and it is not in the local cache; pass a local "
            "diffusers folder instead"
        ) from None
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
    except OSError as exc:
        raise ModelLoadError(
            f"model {spec.id!r}: the hub could not be reached ({type(exc).__name__}); pass a "
            "local diffusers folder, or retry when the hub is reachable"
        ) from None
    _parse_index(Path(index_file).read_bytes(), f"{spec.id}/model_index.json")


# --- litter -------------------------------------------------------------------------------------


def sweep_litter(request: AugmentRequest) -> int:
    """Remove what killed runs of this request left (temp files, in-flight uploads)."""
    storage = Storage(request.output)
    run = layout.RunLayout(request.request_hash).run
    removed = storage.sweep_litter(run, LITTER_AGE_S)
    removed += storage.sweep_litter(layout.registry_dataset(request.dataset), LITTER_AGE_S)
    removed += storage.sweep_litter(layout.PREFLIGHT, LITTER_AGE_S)
    return removed
