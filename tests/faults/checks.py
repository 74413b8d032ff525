"""The promise every fault test checks, and the request the fault tests start from."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from augflow.schemas.registry import RegistryEntry
from augflow.tasks.register import list_versions
from augflow.tasks.storage import Storage


def rows_of(storage: Storage, entry: RegistryEntry) -> list[str]:
    return (
        storage.read_parquet([f.key for f in entry.files], columns=["row_id"]).column(0).to_pylist()
    )


def assert_one_version(storage: Storage, dataset: str, rows: int) -> RegistryEntry:
    """No row lost, none duplicated, exactly one registered version."""
    versions = list_versions(storage, dataset)
    assert len(versions) == 1, [v.ref for v in versions]
    (entry,) = versions
    ids = rows_of(storage, entry)
    assert len(ids) == len(set(ids)) == rows == entry.num_rows, (len(ids), len(set(ids)), rows)
    assert entry.num_quarantined == 0 and entry.quality.passed
    return entry


def generate_request(model: Path | str, output: str, dataset: str, **over: Any) -> Any:
    from augflow.schemas import parse_request

    body: dict[str, Any] = {
        "dataset": dataset,
        "operation": {"kind": "generate", "num_images": 6},
        "model": {"id": str(model)},
        "output": output,
        "steps": 1,
        "shard_size": 2,
        "execution": {"workers": 1, "device": "cpu", "max_retries": 2},
    }
    body.update(over)
    return parse_request(body)


def photo_pngs(n: int, size: int) -> list[bytes]:
    """PNG crops of real photos shipped with scikit-image."""
    import io

    import numpy as np
    from PIL import Image
    from skimage import data

    photos = [data.astronaut(), data.chelsea(), data.coffee()]
    out = []
    for i in range(n):
        y, x = 30 + 11 * i, 50 + 13 * i
        crop = np.ascontiguousarray(photos[i % len(photos)][y : y + size, x : x + size])
        buf = io.BytesIO()
        Image.fromarray(crop).save(buf, format="PNG")
        out.append(buf.getvalue())
    return out


@contextmanager
def warnings_of(logger: str) -> Iterator[list[str]]:
    """Messages logged at WARNING or above by ``logger`` while the block runs. A handler on the
    logger itself: Prefect reconfigures the root logger when its first flow starts."""
    seen: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append(record.getMessage())

    handler = Collect(logging.WARNING)
    log = logging.getLogger(logger)
    log.addHandler(handler)
    try:
        yield seen
    finally:
        log.removeHandler(handler)
