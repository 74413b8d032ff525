"""``bundled:NAME`` model ids: models shipped inside augflow (models/bundled/NAME), wherever augflow
is installed. The id, not the install path, is what the request hash sees.

Imports neither torch nor diffusers, so the driver's preflight resolves ids without loading them.
"""

from __future__ import annotations

from pathlib import Path

from augflow.schemas.errors import ModelLoadError

BUNDLED_PREFIX = "bundled:"
BUNDLED_DIR = Path(__file__).resolve().parent / "bundled"


def bundled_models() -> list[str]:
    """The ``bundled:NAME`` ids this installation ships (folders with a model_index.json)."""
    if not BUNDLED_DIR.is_dir():
        return []
    found = (p.name for p in BUNDLED_DIR.iterdir() if (p / "model_index.json").is_file())
    return [BUNDLED_PREFIX + n for n in sorted(found)]


def local_model_path(model_id: str) -> Path:
    """The folder a model id names on this machine (it may not exist: then it is a hub id)."""
    if not model_id.startswith(BUNDLED_PREFIX):
        return Path(model_id).expanduser()
    # only names found on disk, so `bundled:../x` can never leave the folder
    if model_id not in bundled_models():
        raise ModelLoadError(
            f"model {model_id!r} is not a bundled model; this installation ships: "
            + (", ".join(bundled_models()) or "none")
        )
    return BUNDLED_DIR / model_id.removeprefix(BUNDLED_PREFIX)
