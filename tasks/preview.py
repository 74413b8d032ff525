"""A preview grid a person can judge at a glance: source | outputs for each sampled source, or a
plain grid of generated images. Tiny images are enlarged with nearest-neighbour so pixels show."""

from __future__ import annotations

import io
from collections import defaultdict

from PIL import Image, ImageDraw

from augflow.models.images import decode_image
from augflow.tasks.storage import Storage, open_uri

CELL = 128
MAX_SOURCES = 6
MAX_GENERATED = 24


def _cell(img: Image.Image) -> Image.Image:
    scale = CELL / max(img.size)
    size = (max(1, round(img.width * scale)), max(1, round(img.height * scale)))
    resample = Image.Resampling.NEAREST if scale >= 2 else Image.Resampling.LANCZOS
    canvas = Image.new("RGB", (CELL, CELL), (255, 255, 255))
    small = img.convert("RGB").resize(size, resample)
    canvas.paste(small, ((CELL - size[0]) // 2, (CELL - size[1]) // 2))
    return canvas


def _load_source(uri: str, row: int | None) -> Image.Image | None:
    try:
        if row is None:
            with open_uri(uri) as fh:
                return decode_image(fh.read(), uri)
        import pyarrow.parquet as pq

        with open_uri(uri) as fh:
            value = pq.read_table(fh, columns=["image"]).column("image")[row].as_py()
        return decode_image(value["bytes"] if isinstance(value, dict) else value, f"{uri}#{row}")
    except Exception:
        return None


def build_preview(storage: Storage, data_files: list[str], key: str, operation: str) -> str | None:
    """Write the grid PNG at ``key``; returns its URI, or None when there is nothing to show."""
    if not data_files:
        return None
    columns = ["image", "source_id", "source_uri", "source_row", "variant"]
    rows: list[dict] = []
    for f in data_files:
        rows.extend(storage.read_parquet([f], columns=columns).to_pylist())
        if len(rows) >= MAX_GENERATED * 4:
            break
    if not rows:
        return None
    if operation == "generate":
        images = [decode_image(r["image"]["bytes"], r["source_id"]) for r in rows[:MAX_GENERATED]]
        cols = min(8, len(images))
        grid = Image.new("RGB", (cols * CELL, -(-len(images) // cols) * CELL), (255, 255, 255))
        for n, img in enumerate(images):
            grid.paste(_cell(img), ((n % cols) * CELL, (n // cols) * CELL))
    else:
        by_source: dict[str, list[dict]] = defaultdict(list)
        for r in rows:
            if len(by_source) < MAX_SOURCES or r["source_id"] in by_source:
                by_source[r["source_id"]].append(r)
        width = 1 + max(len(v) for v in by_source.values())
        grid = Image.new("RGB", (width * CELL, len(by_source) * (CELL + 16)), (255, 255, 255))
        draw = ImageDraw.Draw(grid)
        for y, (sid, outs) in enumerate(by_source.items()):
            top = y * (CELL + 16)
            src = _load_source(outs[0]["source_uri"], outs[0]["source_row"])
            if src is not None:
                grid.paste(_cell(src), (0, top + 16))
            draw.text((2, top + 2), f"before: {sid[:28]}", fill=(0, 0, 0))
            for x, r in enumerate(sorted(outs, key=lambda r: r["variant"]), start=1):
                grid.paste(_cell(decode_image(r["image"]["bytes"], sid)), (x * CELL, top + 16))
                draw.text((x * CELL + 2, top + 2), f"after #{r['variant']}", fill=(0, 0, 0))
    buf = io.BytesIO()
    grid.save(buf, format="PNG")
    storage.write_bytes(key, buf.getvalue())
    return storage.uri(key)
