"""The shard worker without Ray: staging, commit markers, skips, quarantine and Parquet inputs."""

from __future__ import annotations

import io
import os
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import photo_crops
from PIL import Image

from augflow.schemas import parse_request
from augflow.tasks.commits import ShardFiles, commit_shard, read_marker, shard_state
from augflow.tasks.layout import RunLayout
from augflow.tasks.plan import plan_request
from augflow.tasks.shard_worker import ShardWorker
from augflow.tasks.storage import Storage


@pytest.fixture(scope="module")
def ddim(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from dummy_models import make_tiny_ddpm

    return make_tiny_ddpm(tmp_path_factory.mktemp("m") / "ddim", scheduler="ddim")


def _request(model: Path, root: Path, **over: object):
    body = {
        "dataset": "w",
        "operation": {"kind": "generate", "num_images": 3},
        "model": {"id": str(model)},
        "output": str(root),
        "steps": 3,
        "shard_size": 3,
    }
    body.update(over)
    return parse_request(body)


def test_commit_marker_is_written_last_and_reruns_skip(ddim: Path, tmp_path: Path) -> None:
    request = _request(ddim, tmp_path, write_image_files=True)
    shard = plan_request(request).shards[0]
    worker = ShardWorker(request)
    first = worker.process(shard)
    assert first.status == "computed" and first.num_rows == 3
    layout = RunLayout(request.request_hash)
    marker = tmp_path / layout.commit_marker(shard.shard_id)
    data = tmp_path / layout.data_file(shard.shard_id)
    assert marker.is_file() and data.is_file()
    assert len(list((tmp_path / layout.run / "images" / shard.shard_id).glob("*.png"))) == 3
    again = worker.process(shard)
    assert again.status == "skipped" and again.data_file == first.data_file

    # A crash after the data file but before the marker: the shard is redone into the same key,
    # with the same bytes, and committed once.
    before = data.read_bytes()
    marker.unlink()
    redo = worker.process(shard)
    assert redo.status == "computed" and data.read_bytes() == before
    assert len(list(marker.parent.glob("*.json"))) == 1


def test_parquet_inputs_and_bad_cells_become_quarantine_rows(ddim: Path, tmp_path: Path) -> None:
    cells = []
    for img in photo_crops(2, size=16):
        buf = io.BytesIO()
        img.save(buf, format="PNG")
        cells.append({"bytes": buf.getvalue(), "path": None})
    cells.append({"bytes": b"GIF89a-not-really", "path": None})
    pq.write_table(pa.table({"row_id": ["a", "b", "c"], "image": cells}), tmp_path / "src.parquet")
    request = _request(
        ddim,
        tmp_path / "out",
        operation={"kind": "img2img", "variants": 1, "strength": 0.4},
        inputs=str(tmp_path / "src.parquet"),
        image_size=16,
    )
    result = ShardWorker(request).process(plan_request(request).shards[0])
    assert (result.num_rows, result.num_quarantined) == (2, 1)
    q = pq.read_table(tmp_path / "out" / result.quarantine_file).to_pylist()
    assert q[0]["source_id"] == "c" and q[0]["stage"] == "decode" and q[0]["reason"]
    rows = pq.read_table(tmp_path / "out" / result.data_file).to_pylist()
    assert [r["source_row"] for r in rows] == [0, 1]


def test_concurrent_shards_on_one_worker_match_a_sequential_run(ddim: Path, tmp_path: Path) -> None:
    """The Ray actor runs two shards at once (one computes while the other reads or uploads)."""
    from concurrent.futures import ThreadPoolExecutor

    def run(root: Path, threads: int) -> dict[str, bytes]:
        request = _request(
            ddim, root, operation={"kind": "generate", "num_images": 6}, shard_size=2
        )
        worker = ShardWorker(request)
        with ThreadPoolExecutor(threads) as pool:
            results = list(pool.map(worker.process, plan_request(request).shards))
        assert [r.status for r in results] == ["computed"] * 3
        rows = [r for res in results for r in pq.read_table(root / res.data_file).to_pylist()]
        return {r["row_id"]: r["image"]["bytes"] for r in rows}

    assert run(tmp_path / "threads", 2) == run(tmp_path / "sequential", 1)


def _png(img: Image.Image, fmt: str = "PNG", **kw: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def _img2img(model: Path, root: Path, inputs: Path, **over: object):
    return _request(
        model,
        root,
        operation={"kind": "img2img", "variants": 1, "strength": 0.4},
        inputs=str(inputs),
        image_size=16,
        shard_size=64,
        **over,
    )


def test_a_shard_with_every_input_quarantined_writes_no_data_file(
    ddim: Path, tmp_path: Path
) -> None:
    src = tmp_path / "in"
    src.mkdir()
    good = _png(photo_crops(1, size=24)[0])
    (src / "a-truncated.png").write_bytes(good[: len(good) // 2])
    (src / "b-tiny.png").write_bytes(_png(Image.new("RGB", (1, 1))))
    request = _img2img(ddim, tmp_path / "out", src)
    shard = plan_request(request).shards[0]
    worker = ShardWorker(request)
    result = worker.process(shard)
    assert (result.num_rows, result.num_quarantined, result.data_file) == (0, 2, None)
    layout = RunLayout(request.request_hash)
    out = tmp_path / "out"
    assert not (out / layout.data_file(shard.shard_id)).exists()
    assert not list(out.rglob("shards/*.parquet"))  # no 0-row file anywhere
    marker = read_marker(Storage(str(out)), layout.commit_marker(shard.shard_id))
    assert marker.data_file is None and marker.quarantine_file == result.quarantine_file
    reasons = {
        r["source_id"]: r["reason"] for r in pq.read_table(out / result.quarantine_file).to_pylist()
    }
    assert "corrupt" in reasons["a-truncated.png"]
    assert "too small: 1x1" in reasons["b-tiny.png"] and "quality.min_side" in reasons["b-tiny.png"]
    again = worker.process(shard)
    assert again.status == "skipped" and again.data_file is None

    # Damaged later (its quarantine file truncated): detected and recomputed; the same bytes are
    # rewritten in place under the same marker, still with no data file.
    q_path = out / result.quarantine_file
    q_bytes = q_path.read_bytes()
    q_path.write_bytes(q_bytes[:10])
    repaired = worker.process(shard)
    assert repaired.status == "computed" and repaired.data_file is None
    assert q_path.read_bytes() == q_bytes
    assert read_marker(Storage(str(out)), layout.commit_marker(shard.shard_id)) == marker
    # Different bytes for a damaged quarantine-only shard: the next generation, keyed by the
    # quarantine file's digest, again without a data file.
    q_path.write_bytes(q_bytes[:10])
    storage = Storage(str(out))
    state = shard_state(storage, layout, shard.shard_id)
    assert state.damage and "quarantine" in state.damage
    files = ShardFiles(shard.shard_id, None, b"other bytes", 0, 2, marker.row_ids_sha256)
    g1 = commit_shard(storage, layout, files, previous=state)
    assert (g1.generation, g1.data_file, g1.data_bytes) == (1, None, 0)
    assert g1.quarantine_file and (out / g1.quarantine_file).read_bytes() == b"other bytes"
    assert shard_state(storage, layout, shard.shard_id).committed


def test_degenerate_mpo_animated_and_unreadable_sources(ddim: Path, tmp_path: Path) -> None:
    src = tmp_path / "in"
    src.mkdir()
    crops = photo_crops(3, size=24)
    (src / "phone.jpg").write_bytes(_png(crops[0], "MPO", save_all=True, append_images=crops[1:]))
    (src / "anim.gif").write_bytes(_png(crops[0], "GIF", save_all=True, append_images=crops[1:]))
    (src / "strip.png").write_bytes(_png(Image.new("RGB", (16, 400), (9, 9, 9))))
    (src / "small.png").write_bytes(_png(crops[1].resize((8, 8))))
    (src / "odd::name#1.png").write_bytes(_png(crops[2]))  # '::' chains protocols in fsspec
    os.mkfifo(src / "pipe.png")  # listed as rejected: never opened, so nothing blocks
    (src / "notes.txt").write_text("hello")
    request = _img2img(ddim, tmp_path / "out", src, quality={"min_side": 8})
    result = ShardWorker(request).process(plan_request(request).shards[0])
    rows = {
        r["source_id"]: r for r in pq.read_table(tmp_path / "out" / result.data_file).to_pylist()
    }
    q = {
        r["source_id"]: r["reason"]
        for r in pq.read_table(tmp_path / "out" / result.quarantine_file).to_pylist()
    }
    assert set(rows) == {"phone.jpg", "small.png", "odd::name#1.png"}  # min_side 8: 8x8 is in
    assert (
        rows["phone.jpg"]["source_note"] == "MPO multi-picture JPEG: the first of 3 images is used"
    )
    assert rows["small.png"]["source_note"] is None
    assert set(q) == {"anim.gif", "strip.png", "pipe.png", "notes.txt"}
    assert "unsupported format: GIF (animated)" in q["anim.gif"]
    assert "too elongated: 16x400" in q["strip.png"] and "25:1" in q["strip.png"]
    assert "not a regular file" in q["pipe.png"]
    assert "not an image: text" in q["notes.txt"]


def test_parquet_cells_without_image_bytes_are_quarantined(ddim: Path, tmp_path: Path) -> None:
    good = _png(photo_crops(1, size=16)[0])
    table = pa.table(
        {
            "id": ["ok", "path-only", "null", "empty"],
            "image": [
                {"bytes": good, "path": None},
                {"bytes": None, "path": "elsewhere/cat.png"},
                None,
                {"bytes": b"", "path": None},
            ],
        }
    )
    pq.write_table(table, tmp_path / "src.parquet")
    request = _img2img(ddim, tmp_path / "out", tmp_path / "src.parquet")
    result = ShardWorker(request).process(plan_request(request).shards[0])
    assert (result.num_rows, result.num_quarantined) == (1, 3)
    q = {
        r["source_id"]: r["reason"]
        for r in pq.read_table(tmp_path / "out" / result.quarantine_file).to_pylist()
    }
    assert "no bytes (path 'elsewhere/cat.png' only)" in q["path-only"]
    assert q["null"].endswith("empty image cell") and q["empty"].endswith("empty image cell")
