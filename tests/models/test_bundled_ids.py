"""``bundled:NAME`` ids (models/bundled_ids.py): resolved to shipped folders only, without torch."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from augflow.models.bundled_ids import BUNDLED_DIR, bundled_models, local_model_path
from augflow.schemas.errors import ModelLoadError


def test_every_listed_id_is_a_shipped_diffusers_folder() -> None:
    ids = bundled_models()
    assert "bundled:sr3-denoise" in ids and "bundled:ddim-faces32" in ids
    for model_id in ids:
        assert (local_model_path(model_id) / "model_index.json").is_file()


@pytest.mark.parametrize(
    "bad", ["bundled:nope", "bundled:../../etc", "bundled:", "bundled:features-tiny"]
)
def test_unknown_or_escaping_names_are_refused_listing_what_ships(bad: str) -> None:
    with pytest.raises(ModelLoadError, match="this installation ships: bundled:"):
        local_model_path(bad)


def test_other_ids_are_paths() -> None:
    assert local_model_path("org/model") == Path("org/model")
    assert local_model_path("~/m") == Path.home() / "m"
    assert BUNDLED_DIR.name == "bundled"


def test_resolving_an_id_loads_no_torch() -> None:
    code = (
        "import sys; from augflow.models.bundled_ids import local_model_path;"
        "local_model_path('bundled:sr3-denoise'); print('torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
