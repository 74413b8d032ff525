"""The README's readers, executed as written: Hugging Face datasets through the root's card, a
torch DataLoader, pyarrow and Ray Data (images decoded to arrays) from the URIs `augflow datasets
show --json` gives. A training job copies these lines; they must keep working."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from versions import make_version

REPO = Path(__file__).resolve().parents[2]
MARKER = "<!-- readers: this block is executed by tests/flows/test_readers.py -->"


def _readme_block(after: str, lang: str) -> str:
    text = (REPO / "README.md").read_text()
    rest = text.split(after, 1)[1]
    return rest.split(f"```{lang}\n", 1)[1].split("```", 1)[0]


def test_the_readme_request_is_the_demo_request() -> None:
    shown = yaml.safe_load(_readme_block("## A request", "yaml"))
    assert shown == yaml.safe_load((REPO / "examples" / "demo-denoise.yaml").read_text())


@pytest.mark.slow
def test_the_readme_readers_run_as_written(
    tiny_model: Path, tmp_path: Path, ray_local: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "augflow-data"
    entry = make_version(root, tiny_model, "demo-denoised-photos", num_images=5, shard_size=2)
    code = _readme_block(MARKER, "python")
    assert 'ROOT = "augflow-data"' in code
    code = code.replace('ROOT = "augflow-data"', f"ROOT = {str(root)!r}")
    # `augflow` as a user has it: the console script next to this interpreter
    monkeypatch.setenv("PATH", f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    ns: dict = {}
    exec(compile(code, "README.md", "exec"), ns)

    ds = ns["ds"]
    assert len(ds) == 5 and ds[0]["image"].size == (16, 16)
    ids = sorted(ds["row_id"])
    batch = next(iter(ns["loader"]))
    assert (
        tuple(batch["image"].shape) == (5, 3, 16, 16) and str(batch["image"].dtype) == "torch.uint8"
    )
    assert sorted(ns["uris"]) == sorted(f"file://{root}/{f.key}" for f in entry.files)
    table = ns["table"]
    assert table.num_rows == 5 and sorted(table.column("row_id").to_pylist()) == ids
    assert table.schema.field("image").type.names == ["bytes", "path"]
    rows = ns["rows"].take_all()
    assert sorted(r["row_id"] for r in rows) == ids
    image = rows[0]["image"]
    assert isinstance(image, np.ndarray) and image.shape == (16, 16, 3) and image.dtype == np.uint8
