"""Exports of a registered version, read back by the libraries a training job uses: `webdataset`
for the tars, `datasets` (imagefolder) for the image folder; locally and on a real S3 server."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import webdataset as wds
from versions import make_version

from augflow.schemas.errors import ExportError
from augflow.schemas.registry import RegistryEntry
from augflow.tasks.export import export_version
from augflow.tasks.storage import Storage


@pytest.fixture(scope="module")
def labelled_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from dummy_models import make_tiny_ddpm

    return make_tiny_ddpm(
        tmp_path_factory.mktemp("m") / "cond", scheduler="ddim", num_class_embeds=3
    )


@pytest.fixture(scope="module")
def labelled(labelled_model: Path, tmp_path_factory: pytest.TempPathFactory) -> RegistryEntry:
    root = tmp_path_factory.mktemp("root")
    return make_version(root, labelled_model, "digits", num_images=5, class_labels=[0, 1, 2])


def _rows(root: str, entry: RegistryEntry) -> list[dict]:
    storage = Storage(root)
    return storage.read_parquet(entry.file_keys).to_pylist()


def _root(entry: RegistryEntry) -> str:
    return entry.request["output"]


def test_webdataset_shards_read_back_with_webdataset(
    labelled: RegistryEntry, tmp_path: Path
) -> None:
    out = export_version(
        Storage(_root(labelled)), labelled, "webdataset", str(tmp_path / "wds"), samples_per_shard=2
    )
    assert out.files == tuple(f"digits-{labelled.version}-{i:06d}.tar" for i in range(3))
    assert out.pattern == f"file://{tmp_path}/wds/digits-{labelled.version}-{{000000..000002}}.tar"
    samples = list(
        wds.WebDataset(out.pattern.removeprefix("file://"), shardshuffle=False).decode("pil")
    )
    rows = _rows(_root(labelled), labelled)
    assert [s["__key__"] for s in samples] == [r["row_id"] for r in rows]
    for sample, row in zip(samples, rows, strict=True):
        assert sample["png"].size == (16, 16)
        assert sample["cls"] == row["class_label"] and sample["cls"] in (0, 1, 2)
        meta = sample["json"]
        assert meta["row_id"] == row["row_id"] and meta["seed"] == row["seed"]
        assert meta["model_revision"] == labelled.model.revision
        assert meta["request_hash"] == labelled.request_hash and "image" not in meta
    manifest = json.loads((tmp_path / "wds" / "export.json").read_text())
    assert manifest["ref"] == labelled.ref and manifest["num_rows"] == 5
    assert [f["rows"] for f in manifest["files"]] == [2, 2, 1]


def test_the_same_version_exports_to_the_same_bytes(
    labelled: RegistryEntry, tmp_path: Path
) -> None:
    storage = Storage(_root(labelled))
    a = export_version(storage, labelled, "webdataset", str(tmp_path / "a"))
    b = export_version(storage, labelled, "webdataset", str(tmp_path / "b"))
    assert len(a.files) == 1
    assert (tmp_path / "a" / a.files[0]).read_bytes() == (tmp_path / "b" / b.files[0]).read_bytes()
    # exporting again into the same place is fine; another version there is refused
    export_version(storage, labelled, "webdataset", str(tmp_path / "a"))


def test_a_shard_closes_at_its_byte_limit(labelled: RegistryEntry, tmp_path: Path) -> None:
    out = export_version(
        Storage(_root(labelled)), labelled, "webdataset", str(tmp_path / "w"), max_shard_bytes=1
    )
    assert len(out.files) == 5 and out.num_rows == 5


def test_image_folder_loads_with_datasets(labelled: RegistryEntry, tmp_path: Path) -> None:
    import datasets

    out = export_version(
        Storage(_root(labelled)), labelled, "imagefolder", str(tmp_path / "if"), samples_per_shard=3
    )
    assert out.files == ("train/000000/metadata.jsonl", "train/000001/metadata.jsonl")
    ds = datasets.load_dataset(str(tmp_path / "if"), split="train", cache_dir=str(tmp_path / "c"))
    rows = {r["row_id"]: r for r in _rows(_root(labelled), labelled)}
    assert len(ds) == 5 and set(ds["row_id"]) == set(rows)
    first = ds[0]
    assert first["image"].size == (16, 16)
    assert first["class_label"] == rows[first["row_id"]]["class_label"]
    # a column null in every row (no source for generated images) is left out
    assert "source_uri" not in ds.column_names and "seed" in ds.column_names


def test_destinations_that_would_mix_things_up_are_refused(
    labelled: RegistryEntry, labelled_model: Path, tmp_path: Path
) -> None:
    storage = Storage(_root(labelled))
    with pytest.raises(ExportError, match="output root"):
        export_version(storage, labelled, "webdataset", _root(labelled))
    with pytest.raises(ExportError, match="inside its registry or runs"):
        export_version(storage, labelled, "imagefolder", _root(labelled) + "/runs/x")
    with pytest.raises(ExportError, match="not one of: webdataset, imagefolder"):
        export_version(storage, labelled, "tfrecord", str(tmp_path / "t"))
    export_version(storage, labelled, "webdataset", str(tmp_path / "w"))
    other = make_version(tmp_path / "r2", labelled_model, "other", num_images=1, class_labels=[1])
    with pytest.raises(ExportError, match=f"records an export of {labelled.ref}"):
        export_version(Storage(str(tmp_path / "r2")), other, "webdataset", str(tmp_path / "w"))


@pytest.mark.slow
def test_export_to_s3_reads_back_with_webdataset(
    labelled: RegistryEntry, s3_root: str, tmp_path: Path
) -> None:
    from augflow.tasks.storage import filesystem_for

    out = export_version(
        Storage(_root(labelled)), labelled, "webdataset", s3_root + "/wds", samples_per_shard=4
    )
    assert out.uri == s3_root + "/wds" and len(out.files) == 2
    fs, path = filesystem_for(out.uri)
    fs.get(path + "/", str(tmp_path / "down") + "/", recursive=True)
    local = str(tmp_path / "down" / f"digits-{labelled.version}-{{000000..000001}}.tar")
    keys = [s["__key__"] for s in wds.WebDataset(local, shardshuffle=False)]
    assert keys == [r["row_id"] for r in _rows(_root(labelled), labelled)]
    assert json.loads((tmp_path / "down" / "export.json").read_text())["num_rows"] == 5
