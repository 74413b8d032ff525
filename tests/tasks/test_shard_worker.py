"""The shard worker without Ray: staging, commit markers, skips, quarantine and Parquet inputs."""

from __future__ import annotations

import io
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import photo_crops

from augflow.schemas import parse_request
from augflow.tasks.layout import RunLayout
from augflow.tasks.plan import plan_request
from augflow.tasks.shard_worker import ShardWorker


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
