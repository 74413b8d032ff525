"""The dataset card at the output root: plain `datasets` loads a moved copy of the root, by
dataset (newest version) and by version, and concurrent registrations never lose an entry."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from versions import make_version

from augflow.schemas import parse_request
from augflow.schemas.quality import QualitySummary
from augflow.tasks import layout
from augflow.tasks.card import config_name, features_of, read_front_matter, refresh_card
from augflow.tasks.register import build_entry, list_versions, register_version
from augflow.tasks.storage import Storage

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def _configs(root: Path) -> list[str]:
    front = read_front_matter(Storage(str(root)))
    return [c["config_name"] for c in front.get("configs", [])]


# Runs in a fresh interpreter that never imports augflow: what a training job on another machine
# does with a copied folder.
_READER = r"""
import json, sys
import datasets
root = sys.argv[1]
out = {}
for cfg in sys.argv[2:]:
    ds = datasets.load_dataset(root, cfg, split="train")
    first = next(iter(datasets.load_dataset(root, cfg, split="train", streaming=True)))
    out[cfg] = {
        "rows": len(ds),
        "row_ids": sorted(ds["row_id"]),
        "size": list(ds[0]["image"].size),
        "streamed_image": type(first["image"]).__name__,
        "features": sorted(ds.features),
    }
out["augflow_imported"] = any(m.startswith("augflow") for m in sys.modules)
print(json.dumps(out))
"""


def test_a_moved_copy_of_the_root_loads_by_name_and_by_version_with_plain_datasets(
    tiny_model: Path, tmp_path: Path
) -> None:
    root = tmp_path / "root"
    old = make_version(root, tiny_model, "cats", num_images=3, seed=1, created_at=T0)
    new = make_version(root, tiny_model, "cats", num_images=5, seed=2, created_at=T0 + timedelta(1))
    assert _configs(root) == ["cats", config_name("cats", new.version), f"cats@{old.version}"]

    moved = tmp_path / "elsewhere" / "copy"
    shutil.copytree(root, moved)
    shutil.rmtree(root)  # nothing may point back at the original location
    proc = subprocess.run(
        [sys.executable, "-c", _READER, str(moved), "cats", f"cats@{old.version}"],
        capture_output=True,
        text=True,
        timeout=600,
        env={**_env(), "HF_HOME": str(tmp_path / "hf")},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(proc.stdout.splitlines()[-1])
    assert got["augflow_imported"] is False
    assert got["cats"]["rows"] == 5 and got[f"cats@{old.version}"]["rows"] == 3
    newest_ids = sorted(
        r
        for f in new.files
        for r in pq.read_table(moved / f.key, columns=["row_id"]).column(0).to_pylist()
    )
    assert got["cats"]["row_ids"] == newest_ids
    assert got["cats"]["size"] == [16, 16] and got["cats"]["streamed_image"] == "PngImageFile"
    assert {"image", "row_id", "seed", "model_revision", "pixel_std"} <= set(
        got["cats"]["features"]
    )


def _env() -> dict[str, str]:
    import os

    return {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}


def test_one_dataset_is_the_default_config_and_several_need_a_name(
    tiny_model: Path, tmp_path: Path
) -> None:
    import datasets

    root = tmp_path / "root"
    make_version(root, tiny_model, "cats", num_images=2)
    # JSON and Parquet files the card does not name (registry entries, markers, strays) are not
    # data: the card's configs decide what is read
    (root / "stray.json").write_text('{"not": "rows"}')
    cache = str(tmp_path / "hf")
    only = datasets.load_dataset(str(root), cache_dir=cache)
    assert list(only) == ["train"] and only["train"].num_rows == 2

    make_version(root, tiny_model, "dogs", num_images=4)
    with pytest.raises(ValueError, match="Config name is missing") as info:
        datasets.load_dataset(str(root), cache_dir=cache)
    assert "'cats'" in str(info.value) and "'dogs'" in str(info.value)
    assert datasets.load_dataset(str(root), "dogs", split="train", cache_dir=cache).num_rows == 4
    front = read_front_matter(Storage(str(root)))
    assert not any(c.get("default") for c in front["configs"])


def test_card_text_carries_license_tags_description_lineage_and_quality(
    tiny_model: Path, tmp_path: Path
) -> None:
    card = {"license": "cc-by-4.0", "tags": ["faces", "tiny"], "description": "Tiny faces."}
    entry = make_version(tmp_path, tiny_model, "faces", num_images=2, card=card)
    text = (tmp_path / "README.md").read_text()
    front = read_front_matter(Storage(str(tmp_path)))
    assert front["license"] == "cc-by-4.0"
    assert front["tags"] == ["augflow", "synthetic", "faces", "tiny"]
    info = {i["config_name"]: i for i in front["dataset_info"]}[f"faces@{entry.version}"]
    assert info["splits"] == [
        {"name": "train", "num_bytes": sum(f.bytes for f in entry.files), "num_examples": 2}
    ]
    assert {"name": "image", "dtype": "image"} in info["features"]
    assert "Tiny faces." in text and entry.request_hash in text
    assert entry.model.revision in text and "**Quality gate**: passed" in text
    assert f"]({entry.quality.report_key})" in text  # a link relative to the root
    assert "file://" not in text and str(tmp_path) not in text.split("- model:")[0]


def test_the_card_is_not_part_of_the_request_hash() -> None:
    body: dict[str, Any] = {
        "dataset": "d",
        "operation": {"kind": "generate", "num_images": 1},
        "model": {"id": "m"},
    }
    plain = parse_request(body)
    carded = parse_request({**body, "card": {"license": "mit", "tags": ["x"]}})
    assert plain.request_hash == carded.request_hash
    assert "card" not in carded.hashed_fields()


class _RacyStorage(Storage):
    """Registers another version between this writer's registry listing and its card write:
    the interleaving that would lose an entry if a writer trusted the listing it rendered from."""

    def __init__(self, root: str, before_card_write: Any) -> None:
        super().__init__(root)
        self._hook = before_card_write

    def write_bytes(self, key: str, data: bytes) -> None:
        if key == layout.DATASET_CARD and self._hook is not None:
            hook, self._hook = self._hook, None
            hook()
        super().write_bytes(key, data)


def test_a_registration_landing_mid_refresh_is_in_the_final_card(
    tiny_model: Path, tmp_path: Path
) -> None:
    root = tmp_path / "root"
    first = make_version(root, tiny_model, "cats", num_images=2, seed=1)
    late: list[str] = []
    (root / "README.md").unlink()  # so this refresh has a card to write

    def register_another() -> None:
        late.append(make_version(root, tiny_model, "cats", num_images=2, seed=2).version)

    refresh = refresh_card(_RacyStorage(str(root), register_another))
    # The racing registration wrote its own card first; this writer's stale render landed after
    # it, noticed the registry had changed, and rendered again.
    assert refresh.attempts == 2 and refresh.converged
    assert set(_configs(root)) == {"cats", f"cats@{first.version}", f"cats@{late[0]}"}


def test_concurrent_registrations_never_lose_a_card_entry(tiny_model: Path, tmp_path: Path) -> None:
    root = tmp_path / "root"
    storage = Storage(str(root))
    # The rows are computed first; the race is between the registrations and their card writes.
    entries = []
    for i in range(8):
        e = make_version(tmp_path / "staging", tiny_model, f"set{i % 2}", num_images=1, seed=i)
        entries.append(e)
    shutil.copytree(tmp_path / "staging" / "runs", root / "runs")
    barrier = threading.Barrier(len(entries))
    errors: list[BaseException] = []

    def register(entry: Any) -> None:
        barrier.wait()
        try:
            register_version(storage, entry)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=register, args=(e,)) for e in entries]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    want = {"set0", "set1", *(f"{e.name}@{e.version}" for e in entries)}
    assert set(_configs(root)) == want
    newest = {n: list_versions(storage, n)[-1] for n in ("set0", "set1")}
    front = read_front_matter(storage)
    for c in front["configs"]:
        if c["config_name"] in newest:
            assert c["data_files"][0]["path"] == newest[c["config_name"]].file_keys


def test_a_version_without_rows_is_listed_but_is_no_config(tmp_path: Path) -> None:
    storage = Storage(str(tmp_path))
    request = parse_request(
        {
            "dataset": "empty",
            "operation": {"kind": "denoise"},
            "inputs": "/in",
            "model": {"id": "m"},
        }
    )
    entry = build_entry(
        storage, request, "v0", [], QualitySummary(passed=True, failed=[], report_key="r.md")
    )
    out = register_version(storage, entry)
    assert out.card_uri == storage.uri("README.md")
    front = read_front_matter(storage)
    assert "configs" not in front
    assert "| (no rows) |" in (tmp_path / "README.md").read_text()


def test_features_name_every_column_or_none() -> None:
    image = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    meta = {b"huggingface": json.dumps({"info": {"features": {"img": {"_type": "Image"}}}})}
    schema = pa.schema([("img", image), ("n", pa.int32()), ("x", pa.float64())], metadata=meta)
    assert features_of(schema) == [
        {"name": "img", "dtype": "image"},
        {"name": "n", "dtype": "int32"},
        {"name": "x", "dtype": "float64"},
    ]
    # a type the card cannot spell: no features at all, and datasets infers them from the files
    assert features_of(pa.schema([("n", pa.int32()), ("l", pa.list_(pa.int32()))])) == []
