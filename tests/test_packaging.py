"""What `pip install augflow` gets: a wheel with the bundled models as package data, and
`bundled:NAME` model ids that resolve inside the installed package. (.ci/run installs that wheel
into a fresh venv and runs a request with a bundled model from outside the repository.)"""

from __future__ import annotations

import configparser
import hashlib
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from augflow.models.bundled_ids import BUNDLED_DIR, bundled_models, local_model_path
from augflow.schemas.errors import ModelLoadError

REPO = Path(__file__).resolve().parents[1]


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> zipfile.ZipFile:
    # Built from a copy of the sources, so the build leaves nothing in the checkout.
    src = tmp_path_factory.mktemp("src")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    for package in ("schemas", "models", "tasks", "flows"):
        shutil.copytree(
            REPO / package, src / package, ignore=shutil.ignore_patterns("__pycache__", "*.pyc")
        )
    dist = tmp_path_factory.mktemp("dist")
    build = ["pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(dist), str(src)]
    subprocess.run(
        [sys.executable, "-m", *build],
        check=True,
        capture_output=True,
        timeout=600,
    )
    (path,) = dist.glob("augflow-*.whl")
    return zipfile.ZipFile(path)


def test_the_wheel_carries_every_bundled_model_file(wheel: zipfile.ZipFile) -> None:
    names = set(wheel.namelist())
    shipped = [p for p in (REPO / "models" / "bundled").rglob("*") if p.is_file()]
    assert {p.suffix for p in shipped} == {".json", ".safetensors"}
    for path in shipped:
        member = "augflow/models/" + path.relative_to(REPO / "models").as_posix()
        assert member in names, member
        assert _sha(wheel.read(member)) == _sha(path.read_bytes()), member
    # loading.py finds them next to itself, wherever the package is installed
    assert "augflow/models/loading.py" in names
    assert not any(n.startswith(("tests/", "augflow/tests/")) for n in names)


def test_the_wheel_installs_the_augflow_command(wheel: zipfile.ZipFile) -> None:
    (entry_points,) = [n for n in wheel.namelist() if n.endswith(".dist-info/entry_points.txt")]
    parser = configparser.ConfigParser()
    parser.read_string(wheel.read(entry_points).decode())
    assert parser["console_scripts"]["augflow"] == "augflow.flows.cli:console_main"


def test_bundled_ids_resolve_inside_the_package() -> None:
    assert bundled_models() == [
        "bundled:ddim-digits16",
        "bundled:ddim-faces32",
        "bundled:sr3-denoise",
        "bundled:sr3-upscale",
    ]
    folder = local_model_path("bundled:sr3-denoise")
    assert folder == BUNDLED_DIR / "sr3-denoise" and (folder / "model_index.json").is_file()
    with pytest.raises(ModelLoadError, match="ships: bundled:ddim-digits16, bundled:ddim-faces32"):
        local_model_path("bundled:sd-turbo")
    with pytest.raises(ModelLoadError, match="not a bundled model"):
        local_model_path("bundled:../../etc")
    # anything else is a path (or, when no such folder exists, a hub id)
    assert local_model_path("org/model") == Path("org/model")
