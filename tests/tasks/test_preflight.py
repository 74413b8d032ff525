"""Preflight: the output root, inputs and model are checked in about a second, before Prefect or
Ray start, with messages naming the file or field; nothing is loaded and nothing is left behind."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from augflow.models.bundled_ids import bundled_models, local_model_path
from augflow.schemas import parse_request
from augflow.schemas.errors import InputError, ModelLoadError
from augflow.tasks import layout
from augflow.tasks.preflight import (
    check_inputs_readable,
    check_model,
    check_output_writable,
    preflight,
    sweep_litter,
)
from augflow.tasks.storage import Storage

AUGFLOW = [sys.executable, "-m", "augflow.flows.cli"]


def _request(tmp_path: Path, model: Path | str, **over: object):
    body: dict[str, object] = {
        "dataset": "pre",
        "operation": {"kind": "generate", "num_images": 2},
        "model": {"id": str(model)},
        "output": str(tmp_path / "out"),
    }
    body.update(over)
    return parse_request(body)


def _safetensors(path: Path, tensors: dict[str, int]) -> None:
    """A real safetensors file: a JSON header, then the tensors' float32 bytes."""
    header, offset = {}, 0
    for name, count in tensors.items():
        header[name] = {
            "dtype": "F32",
            "shape": [count],
            "data_offsets": [offset, offset + 4 * count],
        }
        offset += 4 * count
    raw = json.dumps(header).encode()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + b"\0" * offset)


def _model(root: Path, **components: dict[str, bytes] | None) -> Path:
    """A diffusers-style folder: model_index.json naming ``components``, each a folder of files."""
    index: dict[str, object] = {"_class_name": "DDPMPipeline", "_diffusers_version": "0.30.0"}
    for name, files in components.items():
        index[name] = ["diffusers", "UNet2DModel" if name == "unet" else "DDPMScheduler"]
        if files is None:
            continue
        (root / name).mkdir(parents=True, exist_ok=True)
        for fname, data in files.items():
            (root / name / fname).write_bytes(data)
    root.mkdir(parents=True, exist_ok=True)
    (root / "model_index.json").write_text(json.dumps(index))
    return root


def _good_model(root: Path) -> Path:
    path = _model(root, unet={"config.json": b"{}"}, scheduler={"scheduler_config.json": b"{}"})
    _safetensors(path / "unet" / "diffusion_pytorch_model.safetensors", {"w": 16, "b": 4})
    return path


# --- model ---------------------------------------------------------------------------------------


def test_real_models_pass(tiny_model: Path) -> None:
    check_model(parse_request(_body(tiny_model)).model)
    for bundled in bundled_models():  # the diffusers pipelines that ship (not features-tiny)
        check_model(parse_request(_body(local_model_path(bundled))).model)


def test_bundled_ids_resolve_to_the_shipped_folders_without_torch() -> None:
    code = (
        "import sys\n"
        "from augflow.schemas.errors import ModelLoadError\n"
        "from augflow.schemas.request import ModelSpec\n"
        "from augflow.tasks.preflight import check_model\n"
        "for name in ('sr3-denoise', 'sr3-upscale', 'ddim-faces32'):\n"
        "    check_model(ModelSpec(id='bundled:' + name))\n"
        "for bad in ('bundled:nope', 'bundled:', 'bundled:../bundled/sr3-denoise'):\n"
        "    try:\n"
        "        check_model(ModelSpec(id=bad))\n"
        "        print('accepted', bad)\n"
        "    except ModelLoadError as exc:\n"
        "        assert 'is not a bundled model' in str(exc) and 'bundled:sr3-denoise' in str(exc)\n"
        "print('torch' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "False"


def _body(model: Path) -> dict[str, object]:
    return {
        "dataset": "x",
        "operation": {"kind": "generate", "num_images": 1},
        "model": {"id": str(model)},
    }


def _refusal(model: Path | str) -> str:
    with pytest.raises(ModelLoadError) as err:
        check_model(parse_request(_body(Path(model))).model)
    return str(err.value)


def test_a_folder_without_an_index_is_refused(tmp_path: Path) -> None:
    (tmp_path / "m").mkdir()
    assert "has no model_index.json" in _refusal(tmp_path / "m")
    (tmp_path / "f").write_text("x")
    assert "is a file" in _refusal(tmp_path / "f")
    assert "does not exist as a local folder and is not a hub id" in _refusal(tmp_path / "nope")


@pytest.mark.parametrize(
    ("index", "expect"),
    [
        (b"\xff\xfe not utf-8", "cannot be read as JSON"),
        (b"{ broken", "cannot be read as JSON"),
        (b"[1, 2]", "must hold a JSON object, not list"),
        (b'{"_class_name": ["DDPMPipeline"]}', "field `_class_name` must be the pipeline class"),
        (b'{"_class_name": "X", "unet": ["diffusers", 3]}', "field `unet` must be [library, Cl"),
    ],
    ids=["binary", "truncated", "list", "list-valued-class-name", "bad-component"],
)
def test_a_malformed_index_is_refused_naming_the_field(
    tmp_path: Path, index: bytes, expect: str
) -> None:
    model = tmp_path / "m"
    model.mkdir()
    (model / "model_index.json").write_bytes(index)
    text = _refusal(model)
    assert expect in text and "model_index.json" in text


def test_missing_pickle_only_and_truncated_weights_are_refused(tmp_path: Path) -> None:
    missing = _model(tmp_path / "missing", unet=None)
    assert "component 'unet' is listed in model_index.json but has no folder" in _refusal(missing)
    pickled = _model(tmp_path / "pickled", unet={"config.json": b"{}", "model.bin": b"\x80\x04"})
    assert "only pickle weights (model.bin)" in _refusal(pickled)
    bare = _model(tmp_path / "bare", unet={"config.json": b"{}"})
    assert "component 'unet' has no safetensors weights" in _refusal(bare)
    cut = _good_model(tmp_path / "cut")
    weights = cut / "unet" / "diffusion_pytorch_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-10])
    assert "unet/diffusion_pytorch_model.safetensors are truncated" in _refusal(cut)
    garbage = _good_model(tmp_path / "garbage")
    (garbage / "unet" / "diffusion_pytorch_model.safetensors").write_bytes(b"\xff" * 64)
    assert "not a readable safetensors file" in _refusal(garbage)
    sharded = _good_model(tmp_path / "sharded")
    (sharded / "unet" / "diffusion_pytorch_model.safetensors.index.json").write_text(
        json.dumps({"weight_map": {"w": "diffusion_pytorch_model-00002-of-00002.safetensors"}})
    )
    assert "names the weight file diffusion_pytorch_model-00002" in _refusal(sharded)
    # schedulers and other weightless components need no weights; a [null, null] one is absent
    ok = _good_model(tmp_path / "ok")
    index = json.loads((ok / "model_index.json").read_text()) | {"safety_checker": [None, None]}
    (ok / "model_index.json").write_text(json.dumps(index))
    check_model(parse_request(_body(ok)).model)


def test_an_uncached_hub_model_offline_is_refused_fast(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.monotonic()
    text = _refusal("nobody/no-such-model")
    assert "hub is unreachable" in text and time.monotonic() - start < 10


def test_the_checks_load_nothing(tmp_path: Path) -> None:
    # No weights are read and the driver never imports torch or diffusers for it.
    code = (
        "import sys\n"
        "from augflow.schemas import parse_request\n"
        "from augflow.tasks.preflight import preflight\n"
        f"preflight(parse_request({_body(_good_model(tmp_path / 'm'))!r} | {{'output': {str(tmp_path / 'o')!r}}}))\n"
        "print(sorted(m for m in ('torch', 'diffusers', 'transformers') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "[]"


# --- output root and inputs ------------------------------------------------------------------------


def test_the_write_probe_is_removed(tmp_path: Path) -> None:
    check_output_writable(str(tmp_path / "out"))
    assert Storage(str(tmp_path / "out")).list(layout.PREFLIGHT) == []


def test_inputs_must_exist_and_be_readable(tmp_path: Path, photos_dir: Path) -> None:
    model = _good_model(tmp_path / "m")
    img = {"operation": {"kind": "img2img"}}
    check_inputs_readable(_request(tmp_path, model, inputs=str(photos_dir), **img))
    check_inputs_readable(_request(tmp_path, model, inputs=str(photos_dir / "photo-0.png"), **img))
    for bad in (tmp_path / "absent", tmp_path / "empty"):
        if bad.name == "empty":
            bad.mkdir()
        with pytest.raises(InputError, match="does not exist or holds no files"):
            check_inputs_readable(_request(tmp_path, model, inputs=str(bad), **img))


def test_old_litter_of_this_request_is_swept(tmp_path: Path) -> None:
    request = _request(tmp_path, _good_model(tmp_path / "m"))
    run = tmp_path / "out" / layout.RunLayout(request.request_hash).run / "shards"
    run.mkdir(parents=True)
    stale = run / f"s.parquet.tmp-{'3' * 32}"
    stale.write_bytes(b"half")
    os.utime(stale, (time.time() - 7200, time.time() - 7200))
    assert sweep_litter(request) == 1 and not stale.exists()
    preflight(request)  # and the whole preflight passes on a good request


# --- from the command line: seconds, before Prefect and Ray ----------------------------------------


def _run_cli(req: dict, tmp_path: Path, wrap: list[str] | None = None):
    path = tmp_path / "req.yaml"
    path.write_text(yaml.safe_dump(req))
    start = time.monotonic()
    proc = subprocess.run(
        [*(wrap or []), *AUGFLOW, "run", str(path)], capture_output=True, text=True, timeout=300
    )
    return proc, time.monotonic() - start


def test_cli_refuses_an_unloadable_model_in_seconds(tmp_path: Path) -> None:
    model = _model(tmp_path / "m", unet={"config.json": b"{}", "w.pt": b"\x80"})
    out = tmp_path / "out"
    proc, seconds = _run_cli(
        {
            "dataset": "pre",
            "operation": {"kind": "generate", "num_images": 2},
            "model": {"id": str(model)},
            "output": str(out),
        },
        tmp_path,
    )
    assert proc.returncode in (2, 3), proc.stderr[-2000:]
    assert "only pickle weights (w.pt)" in proc.stderr
    assert seconds < 20  # an interpreter and a few file reads; a Ray start alone takes longer
    assert "ray" not in proc.stderr.lower() and not (out / "runs").exists()


def test_cli_refuses_a_read_only_output_root_in_seconds(tmp_path: Path, tiny_model: Path) -> None:
    if subprocess.run(["unshare", "-Urm", "true"], capture_output=True).returncode != 0:
        pytest.skip("cannot create a user+mount namespace here")
    ro = tmp_path / "ro"
    ro.mkdir()
    # A private mount namespace with a read-only tmpfs over `ro`: read-only even for root.
    wrap = ["unshare", "-Urm", "sh", "-c", f'mount -t tmpfs -o ro tmpfs "{ro}" && exec "$@"', "sh"]
    proc, seconds = _run_cli(
        {
            "dataset": "pre",
            "operation": {"kind": "generate", "num_images": 2},
            "model": {"id": str(tiny_model)},
            "output": str(ro / "out"),
        },
        tmp_path,
        wrap,
    )
    assert proc.returncode in (2, 3), proc.stderr[-2000:]
    assert "is not writable" in proc.stderr and "permission denied" in proc.stderr
    assert seconds < 20
