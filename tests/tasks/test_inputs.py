"""Listing the inputs of a request on real local files: image folders, Parquet files and
registered versions. Listing reads names, sizes and row ids, never pixels, and accounts for every
object: an input item (maybe rejected already) or a skip by a documented rule."""

from __future__ import annotations

import os
from datetime import UTC, datetime
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from augflow.schemas import InputError, parse_request
from augflow.schemas.quality import QualitySummary
from augflow.schemas.registry import FileRef, ModelInfo, RegistryEntry
from augflow.tasks import layout
from augflow.tasks.inputs import (
    SKIP_DATASET_METADATA,
    SKIP_FOLDER_MARKER,
    SKIP_HIDDEN,
    SKIP_LINKED_FOLDER,
    SKIP_OUTPUT_ROOT,
    SKIP_RULES,
    check_inputs,
    list_inputs,
    list_sources,
)
from augflow.tasks.storage import Storage


def _req(inputs: str, output: str | None = None):
    body: dict[str, object] = {
        "dataset": "in",
        "operation": {"kind": "denoise"},
        "model": {"id": "m"},
        "inputs": inputs,
    }
    if output:
        body["output"] = output
    return parse_request(body)


def _images_table(ids: list[str] | None, n: int, id_col: str = "id") -> pa.Table:
    cols: dict[str, list[object]] = {"image": [{"bytes": b"x", "path": None}] * n}
    if ids is not None:
        cols[id_col] = ids
    return pa.table(cols)


def test_every_file_of_a_folder_is_an_input_whatever_its_name(photos_dir: Path) -> None:
    (photos_dir / ".DS_Store.png").write_bytes(b"hidden")
    (photos_dir / "UPPER.PNG").write_bytes(b"not decoded while listing")
    (photos_dir / "anim.gif").write_bytes(b"GIF89a...")
    (photos_dir / "README").write_text("no extension at all")
    listing = list_inputs(_req(str(photos_dir)))
    ids = [i.source_id for i in listing.items]
    assert ids == [
        "README",  # decoded later: it becomes a quarantine row, "not an image: text"
        "UPPER.PNG",
        "anim.gif",
        "broken.png",
        "photo-0.png",
        "photo-1.jpg",
        "photo-2.png",
        "photo-3.jpg",
        "sub/photo-4.png",
    ]
    assert listing.skipped == {SKIP_HIDDEN: 2}  # .notes.txt and .DS_Store.png
    objects = [p for p in photos_dir.rglob("*") if p.is_file()]
    assert len(listing.items) == len(objects) - listing.num_skipped
    first = next(i for i in listing.items if i.source_id == "sub/photo-4.png")
    assert first.uri == f"file://{photos_dir / 'sub' / 'photo-4.png'}" and first.row is None
    assert all(i.rejected is None for i in listing.items)


def test_documented_skips_are_counted_by_reason(tmp_path: Path) -> None:
    root = tmp_path / "in"
    (root / ".git" / "objects").mkdir(parents=True)
    (root / ".git" / "objects" / "ab").write_bytes(b"x")
    (root / ".git" / "HEAD").write_text("ref")
    (root / "parquet").mkdir()
    pq.write_table(_images_table(["r0"], 1), root / "parquet" / "part-0.parquet")
    (root / "parquet" / "_SUCCESS").write_bytes(b"")
    (root / "elsewhere").mkdir()
    (root / "elsewhere" / "cat.png").write_bytes(b"png?")
    (root / "link-to-folder").symlink_to(root / "elsewhere")
    (root / "out" / "runs").mkdir(parents=True)
    (root / "out" / "runs" / "shard.parquet").write_bytes(b"outputs of an earlier run")
    listing = list_inputs(_req(str(root), output=str(root / "out")))
    assert [i.source_id for i in listing.items] == ["elsewhere/cat.png", "r0"]
    assert listing.skipped == {
        SKIP_HIDDEN: 2,
        SKIP_DATASET_METADATA: 1,
        SKIP_LINKED_FOLDER: 1,
        SKIP_OUTPUT_ROOT: 1,
    }
    assert set(listing.skipped) <= set(SKIP_RULES)


@pytest.mark.slow
def test_an_s3_prefix_accounts_for_every_object(s3_root: str) -> None:
    from augflow.tasks.storage import filesystem_for

    fs, path = filesystem_for(s3_root)
    bucket, prefix = path.split("/", 1)
    for key, body in [
        ("in/a.png", b"x"),
        ("in/sub/", b""),  # what the S3 console writes for "Create folder"
        ("in/sub/b.gif", b"GIF89a"),
        ("in/.hidden/c.png", b"z"),
        ("in/notes", b"text"),
    ]:
        # the raw call: fsspec paths lose a trailing '/', and that is the point here
        fs.call_s3("put_object", Bucket=bucket, Key=f"{prefix}/{key}", Body=body)
    listing = list_inputs(_req(f"{s3_root}/in"))
    assert [i.source_id for i in listing.items] == ["a.png", "notes", "sub/b.gif"]
    assert listing.items[0].uri == f"{s3_root}/in/a.png"
    assert listing.skipped == {SKIP_HIDDEN: 1, SKIP_FOLDER_MARKER: 1}
    check_inputs(_req(f"{s3_root}/in"))
    for key in ("empty/.DS_Store", "empty/sub/"):
        fs.call_s3("put_object", Bucket=bucket, Key=f"{prefix}/{key}", Body=b"")
    with pytest.raises(InputError, match="holds no input files"):
        check_inputs(_req(f"{s3_root}/empty"))
    with pytest.raises(InputError, match="holds no input files"):
        list_inputs(_req(f"{s3_root}/empty"))


def test_objects_known_to_be_unusable_are_rejected_items_not_dropped(tmp_path: Path) -> None:
    root = tmp_path / "in"
    root.mkdir()
    os.mkfifo(root / "pipe.png")  # reading it would block forever
    (root / "dangling.jpg").symlink_to(tmp_path / "nowhere.jpg")
    (root / "zero").symlink_to("/dev/zero")  # reading it would never end
    (root / "bad.parquet").write_bytes(b"PAR1 but not really")
    pq.write_table(pa.table({"pixels": [b"x"]}), root / "no-image.parquet")
    (root / "ok.png").write_bytes(b"x")
    items = {i.source_id: i for i in list_inputs(_req(str(root))).items}
    assert set(items) == {
        "bad.parquet",
        "dangling.jpg",
        "no-image.parquet",
        "ok.png",
        "pipe.png",
        "zero",
    }
    assert items["ok.png"].rejected is None
    assert "not a regular file" in (items["pipe.png"].rejected or "")
    assert "not a regular file" in (items["zero"].rejected or "")
    assert "does not exist" in (items["dangling.jpg"].rejected or "")
    assert "not a readable Parquet file" in (items["bad.parquet"].rejected or "")
    assert "without an `image` column" in (items["no-image.parquet"].rejected or "")


def test_a_file_name_that_is_not_utf8_is_a_rejected_item(tmp_path: Path) -> None:
    root = tmp_path / "in"
    root.mkdir()
    os.close(os.open(os.path.join(os.fsencode(root), b"caf\xe9.png"), os.O_CREAT | os.O_WRONLY))
    (items,) = [list_inputs(_req(str(root))).items]
    assert [i.source_id for i in items] == ["caf\\xe9.png"]
    assert "not valid UTF-8" in (items[0].rejected or "")
    items[0].source_id.encode("utf-8")  # can be written to Parquet


def test_a_single_file_is_an_input_whatever_it_is(photos_dir: Path, tmp_path: Path) -> None:
    items = list_sources(_req(str(photos_dir / "photo-0.png")))
    assert [(i.source_id, i.uri) for i in items] == [
        ("photo-0.png", f"file://{photos_dir / 'photo-0.png'}")
    ]
    (tmp_path / "notes.txt").write_text("x")  # named explicitly: planned, quarantined on decode
    assert [i.source_id for i in list_sources(_req(str(tmp_path / "notes.txt")))] == ["notes.txt"]


def test_parquet_rows_get_the_id_column_or_their_position(tmp_path: Path) -> None:
    pq.write_table(_images_table(["b", "a"], 2, id_col="row_id"), tmp_path / "with-ids.parquet")
    (tmp_path / "nested").mkdir()
    pq.write_table(_images_table(None, 3), tmp_path / "nested" / "plain.PARQUET")
    items = list_sources(_req(str(tmp_path)))
    assert [(i.source_id, i.row) for i in items] == [
        ("a", 1),
        ("b", 0),
        ("nested/plain.PARQUET#0", 0),
        ("nested/plain.PARQUET#1", 1),
        ("nested/plain.PARQUET#2", 2),
    ]
    assert items[0].uri == f"file://{tmp_path / 'with-ids.parquet'}"


@pytest.mark.parametrize(
    ("ids", "words"), [(["same", "same"], "duplicate source ids"), (["a", None], "empty values")]
)
def test_bad_ids_are_refused(tmp_path: Path, ids: list, words: str) -> None:
    pq.write_table(_images_table(ids, 2), tmp_path / "ids.parquet")
    with pytest.raises(InputError, match=words):
        list_sources(_req(str(tmp_path / "ids.parquet")))


def test_a_single_unusable_parquet_file_is_an_input_error(tmp_path: Path) -> None:
    (tmp_path / "fake.parquet").write_bytes(b"not parquet at all")
    with pytest.raises(InputError, match=r"fake\.parquet: not a readable Parquet file"):
        list_sources(_req(str(tmp_path / "fake.parquet")))


@pytest.mark.parametrize("what", ["missing", "empty", "only-hidden", "no-image-column"])
def test_check_inputs_fails_fast_like_the_listing(tmp_path: Path, what: str) -> None:
    target = tmp_path / what
    if what in ("empty", "only-hidden"):
        target.mkdir()
    if what == "only-hidden":
        (target / ".DS_Store").write_bytes(b"x")
    if what == "no-image-column":
        target = tmp_path / "t.parquet"
        pq.write_table(pa.table({"a": [1]}), target)
    for check in (check_inputs, list_inputs):
        with pytest.raises(InputError) as err:
            check(_req(str(target)))
        assert target.name in str(err.value)
        if what == "only-hidden":
            assert "1 hidden" in str(err.value)


def test_check_inputs_passes_a_usable_folder(photos_dir: Path) -> None:
    check_inputs(_req(str(photos_dir)))


def test_an_unlistable_subfolder_is_an_input_error(tmp_path: Path) -> None:
    if os.geteuid() == 0:
        pytest.skip("root can list any folder")
    root = tmp_path / "in"
    (root / "locked").mkdir(parents=True)
    (root / "a.png").write_bytes(b"x")
    (root / "locked").chmod(0)
    try:
        with pytest.raises(InputError, match="cannot list input folder"):
            list_inputs(_req(str(root)))
    finally:
        (root / "locked").chmod(0o755)


def _register(tmp_path: Path) -> tuple[Storage, str]:
    out = Storage(str(tmp_path / "out"))
    key = "runs/0123456789abcdef/shards/s1.parquet"
    size = out.write_parquet(key, _images_table(["r2", "r1"], 2, id_col="row_id"))
    entry = RegistryEntry(
        name="cats",
        version="v1",
        created_at=datetime(2026, 1, 1, tzinfo=UTC),
        files=[FileRef(key=key, rows=2, bytes=size)],
        num_rows=2,
        num_quarantined=0,
        request={},
        request_hash="0123456789abcdef" * 4,
        code_version="test",
        model=ModelInfo(id="m"),
        quality=QualitySummary(passed=True, report_key="runs/r.md"),
    )
    out.write_json(layout.registry_entry("cats", "v1"), entry.model_dump(mode="json"))
    return out, key


def test_a_registered_version_lists_its_rows(tmp_path: Path) -> None:
    out, key = _register(tmp_path)
    for ref in ("cats@v1", "cats@latest"):
        items = list_sources(_req(ref, output=str(tmp_path / "out")))
        assert [(i.source_id, i.row, i.uri) for i in items] == [
            ("r1", 1, out.uri(key)),
            ("r2", 0, out.uri(key)),
        ]


@pytest.mark.parametrize("ref", ["cats@v9", "dogs@latest"])
def test_an_unknown_registered_version_is_an_input_error(tmp_path: Path, ref: str) -> None:
    _register(tmp_path)
    for check in (check_inputs, list_inputs):
        with pytest.raises(InputError, match=ref.split("@")[0]):
            check(_req(ref, output=str(tmp_path / "out")))
