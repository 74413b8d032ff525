"""The preview grid, built from real Parquet shards and real source files."""

from __future__ import annotations

import io
from pathlib import Path

import pyarrow as pa
import pytest
from PIL import Image

from augflow.schemas.rows import ROW_SCHEMA
from augflow.tasks.preview import CELL, MAX_SOURCES, build_preview
from augflow.tasks.storage import Storage

WHITE = (255, 255, 255)


def _png(color: tuple[int, int, int], size: int = 8) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (size, size), color).save(buf, format="PNG")
    return buf.getvalue()


def _color(i: int) -> tuple[int, int, int]:
    return (20 * i % 256, 200 - 10 * i % 200, 90)


def _shard(storage: Storage, key: str, rows: list[dict[str, object]]) -> str:
    full = []
    for r in rows:
        row: dict[str, object] = {f.name: None for f in ROW_SCHEMA}
        row.update(r)
        full.append(row)
    storage.write_parquet(key, pa.Table.from_pylist(full, schema=ROW_SCHEMA))
    return key


def _grid(storage: Storage, key: str) -> Image.Image:
    return Image.open(io.BytesIO(storage.read_bytes(key))).convert("RGB")


@pytest.fixture
def storage(tmp_path: Path) -> Storage:
    return Storage(str(tmp_path / "out"))


def test_nothing_to_show_writes_nothing(storage: Storage) -> None:
    assert build_preview(storage, [], "p.png", "generate") is None
    assert not storage.exists("p.png")


def test_generated_images_fill_a_grid_in_row_order(storage: Storage) -> None:
    rows = [
        {
            "image": {"bytes": _png(_color(i)), "path": None},
            "source_id": f"generated/{i}",
            "variant": 0,
        }
        for i in range(10)
    ]
    files = [_shard(storage, "a.parquet", rows[:6]), _shard(storage, "b.parquet", rows[6:])]
    uri = build_preview(storage, files, "runs/x/preview-v1.png", "generate")
    assert uri == storage.uri("runs/x/preview-v1.png")
    grid = _grid(storage, "runs/x/preview-v1.png")
    assert grid.size == (8 * CELL, 2 * CELL)  # 8 columns, 10 images -> 2 rows
    centre = CELL // 2
    for i in range(10):
        x, y = (i % 8) * CELL + centre, (i // 8) * CELL + centre
        assert grid.getpixel((x, y)) == _color(i), i
    assert grid.getpixel((3 * CELL + centre, CELL + centre)) == WHITE  # no 12th image


def test_transformed_images_sit_after_their_source(storage: Storage, tmp_path: Path) -> None:
    sources = {}
    for n, name in enumerate(["a.png", "b.png"]):
        path = tmp_path / name
        path.write_bytes(_png((n * 100, 0, 255), size=16))
        sources[name] = f"file://{path}"
    rows = [
        # variants out of order on purpose: the grid sorts them
        {
            "image": {"bytes": _png(_color(v + 3 * s)), "path": None},
            "source_id": sid,
            "source_uri": sources[sid],
            "variant": v,
        }
        for s, sid in enumerate(["a.png", "b.png"])
        for v in (1, 0)
    ]
    build_preview(storage, [_shard(storage, "s.parquet", rows)], "p.png", "img2img")
    grid = _grid(storage, "p.png")
    assert grid.size == (3 * CELL, 2 * (CELL + 16))  # source + 2 variants, 2 sources
    mid = 16 + CELL // 2  # below the caption strip
    for s in range(2):
        top = s * (CELL + 16)
        assert grid.getpixel((CELL // 2, top + mid)) == (s * 100, 0, 255)
        for v in range(2):
            assert grid.getpixel(((v + 1) * CELL + CELL // 2, top + mid)) == _color(v + 3 * s)
    # captions were drawn in the strip above the images
    assert any(grid.getpixel((x, 8)) != WHITE for x in range(2, 60))


def test_an_unreadable_source_leaves_its_cell_blank(storage: Storage, tmp_path: Path) -> None:
    rows = [
        {
            "image": {"bytes": _png((1, 2, 3)), "path": None},
            "source_id": "gone.png",
            "source_uri": f"file://{tmp_path / 'gone.png'}",
            "variant": 0,
        }
    ]
    build_preview(storage, [_shard(storage, "s.parquet", rows)], "p.png", "denoise")
    grid = _grid(storage, "p.png")
    assert grid.getpixel((CELL // 2, 16 + CELL // 2)) == WHITE
    assert grid.getpixel((CELL + CELL // 2, 16 + CELL // 2)) == (1, 2, 3)


def test_parquet_sources_are_read_by_row(storage: Storage, tmp_path: Path) -> None:
    import pyarrow.parquet as pq

    pq.write_table(
        pa.table(
            {
                "image": [
                    {"bytes": _png((9, 9, 9)), "path": None},
                    {"bytes": _png((200, 100, 50)), "path": None},
                ]
            }
        ),
        tmp_path / "in.parquet",
    )
    rows = [
        {
            "image": {"bytes": _png((1, 1, 1)), "path": None},
            "source_id": "in.parquet#1",
            "source_uri": f"file://{tmp_path / 'in.parquet'}",
            "source_row": 1,
            "variant": 0,
        }
    ]
    build_preview(storage, [_shard(storage, "s.parquet", rows)], "p.png", "upscale")
    assert _grid(storage, "p.png").getpixel((CELL // 2, 16 + CELL // 2)) == (200, 100, 50)


def test_at_most_max_sources_rows(storage: Storage) -> None:
    rows = [
        {
            "image": {"bytes": _png(_color(i)), "path": None},
            "source_id": f"s{i}",
            "source_uri": None,
            "variant": 0,
        }
        for i in range(MAX_SOURCES + 3)
    ]
    build_preview(storage, [_shard(storage, "s.parquet", rows)], "p.png", "img2img")
    assert _grid(storage, "p.png").size == (2 * CELL, MAX_SOURCES * (CELL + 16))
