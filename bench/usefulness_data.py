"""Data of the usefulness benchmark: the digits split, augflow's inputs, and reading versions back.

What a training job touches and nothing else: the few-shot images go to augflow as a Parquet file
(``image`` {bytes, path}, ``row_id``, ``label``); registered versions are read back through the
registry entry's file URIs with pyarrow, and labels come from the rows' ``class_label``, never
from the benchmark's own bookkeeping.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from augflow.models.training.digits import DigitsSplit, digits_split, load_digits_16
from augflow.schemas.rows import IMAGE_TYPE


class ContractMissing(RuntimeError):
    """augflow does not (yet) do what an arm needs; the message says what is missing."""


@dataclass(frozen=True)
class Digits:
    images: np.ndarray  # uint8 (N, 16, 16)
    labels: np.ndarray  # int64 (N,)
    split: DigitsSplit

    def subset(self, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return self.images[idx], self.labels[idx]


def load() -> Digits:
    images, labels = load_digits_16()
    return Digits(images, labels, digits_split(labels))


def row_id(index: int) -> str:
    return f"digit-{int(index):04d}"


def index_of(row: str) -> int:
    return int(row.removeprefix("digit-"))


def png(image: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return buf.getvalue()


def write_inputs(path: Path, digits: Digits, idx: np.ndarray) -> Path:
    """The labelled images ``idx`` as one Parquet file, the form augflow reads labelled inputs in."""
    idx = np.asarray(idx)
    cells = [{"bytes": png(digits.images[i]), "path": f"{row_id(i)}.png"} for i in idx]
    table = pa.table(
        {
            "image": pa.array(cells, type=IMAGE_TYPE),
            "row_id": pa.array([row_id(i) for i in idx], type=pa.string()),
            "label": pa.array([int(digits.labels[i]) for i in idx], type=pa.int64()),
        }
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path)
    return path


def input_indices(path: Path) -> np.ndarray:
    """The dataset indices of the images in an inputs file (for the split tests)."""
    ids = pq.read_table(path, columns=["row_id"]).column(0).to_pylist()
    return np.array([index_of(r) for r in ids], dtype=np.int64)


@dataclass(frozen=True)
class VersionRows:
    images: np.ndarray  # uint8 (N, 16, 16) grey
    labels: np.ndarray  # int64 (N,), from the rows' class_label
    source_ids: list[str]
    variants: np.ndarray  # int (N,)


def read_version(root: str, ref: str) -> VersionRows:
    """Read ``name@version`` like a training job: registry entry → file URIs → pyarrow → PIL."""
    from augflow.schemas.names import parse_ref
    from augflow.tasks.register import file_uris, get_version
    from augflow.tasks.storage import Storage, filesystem_for

    name, version = parse_ref(ref)
    storage = Storage(root)
    entry = get_version(storage, name, version)
    tables = []
    for uri in file_uris(storage, entry):
        fs, path = filesystem_for(uri)
        with fs.open(path, "rb") as fh:
            tables.append(
                pq.read_table(fh, columns=["image", "class_label", "source_id", "variant"])
            )
    table = pa.concat_tables(tables)
    labels = table.column("class_label").to_pylist()
    if any(v is None for v in labels):
        missing = sum(v is None for v in labels)
        raise ContractMissing(
            f"{missing} of {len(labels)} rows of {ref} have no class_label: augflow does not carry "
            "the input's `label` column into its output rows yet, so a training job cannot use "
            "these images as labelled data"
        )
    images = [
        np.asarray(Image.open(io.BytesIO(cell["bytes"])).convert("L"))
        for cell in table.column("image").to_pylist()
    ]
    return VersionRows(
        images=np.stack(images) if images else np.zeros((0, 16, 16), np.uint8),
        labels=np.asarray(labels, dtype=np.int64),
        source_ids=table.column("source_id").to_pylist(),
        variants=np.asarray(table.column("variant").to_pylist(), dtype=np.int64),
    )
