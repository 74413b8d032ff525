"""The proxy usefulness measurement (tasks/proxy.py) on real digits: the eval split keeps eval
sources out of training in every form, and wrong labels on synthetic rows lower the lift."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from augflow.models.proxy import TrainConfig
from augflow.models.training.digits import digits_split, load_digits_16
from augflow.schemas import InputError, parse_request
from augflow.tasks.proxy import Labelled, proxy_lift, read_real, split_eval

CFG = TrainConfig(steps=150)


@pytest.fixture(scope="module")
def digits() -> tuple[np.ndarray, np.ndarray]:
    return load_digits_16()


@pytest.fixture(autouse=True)
def _restore_threads() -> Iterator[None]:
    import torch

    threads = torch.get_num_threads()
    yield
    assert torch.get_num_threads() == threads  # the proxy gives back the thread count it took


def _shifted(images: np.ndarray, dx: int) -> np.ndarray:
    """Cheap stand-in variants: the images shifted sideways (still the same digits)."""
    return np.roll(images, dx, axis=2)


def _real(digits, per_class: int) -> Labelled:
    images, labels = digits
    idx = digits_split(labels).labelled[10][: per_class * 10]
    return Labelled(images[idx], labels[idx], [f"digit-{i:04d}" for i in idx])


def _variants(real: Labelled, wrong: bool = False) -> Labelled:
    images = np.concatenate([_shifted(real.images, d) for d in (-1, 1)])
    labels = np.concatenate([real.labels, real.labels])
    if wrong:
        labels = (labels + 1) % 10
    return Labelled(images, labels, real.ids * 2)


def test_eval_sources_and_their_variants_never_train(digits) -> None:
    real = _real(digits, 10)
    train, held = split_eval(real, 0.5)
    assert set(train).isdisjoint(held) and len(train) + len(held) == len(real.ids)
    # per class: half held out, by a hash of the id, so the split is the same every time
    for c in range(10):
        assert (real.labels[held] == c).sum() == 5
    assert np.array_equal(split_eval(real, 0.5)[1], held)
    result = proxy_lift(real, _variants(real), seeds=2, cfg=TrainConfig(steps=5))
    # the variants of the 50 eval sources (2 each) are dropped, those of the 50 train ones kept
    assert (result.synthetic, result.synthetic_dropped) == (100, 100)
    assert (result.real_train, result.real_eval, result.num_classes) == (50, 50, 10)


def test_wrong_labels_on_synthetic_rows_lower_the_lift(digits) -> None:
    real = _real(digits, 10)
    right = proxy_lift(real, _variants(real), seeds=3, cfg=CFG)
    wrong = proxy_lift(real, _variants(real, wrong=True), seeds=3, cfg=CFG)
    # the same real-only arm (same seeds, same split) in both
    assert right.real["per_seed"] == wrong.real["per_seed"]
    assert wrong.lift["mean"] < right.lift["mean"] - 0.1
    assert wrong.lift["ci95"][1] < 0  # half the batch labelled wrongly: clearly harmful


def _parquet(path: Path, images: np.ndarray, labels: list[int | None]) -> Path:
    cells = []
    for i, im in enumerate(images):
        buf = io.BytesIO()
        Image.fromarray(im).save(buf, format="PNG")
        cells.append({"bytes": buf.getvalue(), "path": f"{i}.png"})
    pq.write_table(
        pa.table(
            {
                "image": cells,
                "id": [f"d{i}" for i in range(len(labels))],
                "label": pa.array(labels, type=pa.int64()),
            }
        ),
        path,
    )
    return path


def test_real_images_are_the_labelled_inputs(digits, tmp_path: Path) -> None:
    images, labels = digits
    path = _parquet(tmp_path / "in.parquet", images[:4], [int(labels[0]), None, 3, 1])
    req = parse_request(
        {
            "dataset": "p",
            "operation": {"kind": "img2img"},
            "model": {"id": "m"},
            "inputs": str(path),
        }
    )
    real = read_real(req)
    assert real.ids == ["d0", "d2", "d3"]  # the unlabelled row is not real labelled data
    assert real.labels.tolist() == [int(labels[0]), 3, 1]
    assert np.array_equal(real.images[1], images[2])  # 16×16 grey, as stored
    unlabelled = _parquet(tmp_path / "none.parquet", images[:2], [None, None])
    with pytest.raises(InputError, match="`label` column"):
        read_real(req.model_copy(update={"inputs": str(unlabelled)}))
