"""Labels through the real flow (Prefect server, Ray actors, registry; issue 13): a Parquet input's
`label` column lands in each output row's class_label, conditions a class-conditional model's
img2img, and carries on when a registered version is the input."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import photo_crops

from augflow.schemas import parse_request
from augflow.tasks.register import get_version
from augflow.tasks.storage import Storage

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("prefect_server", "ray_local")]

CLASSES = 3


def _cond_model(path: Path, null_label: int | None) -> Path:
    from dummy_models import make_tiny_ddpm

    make_tiny_ddpm(path, num_class_embeds=CLASSES, scheduler="ddim")
    if null_label is not None:
        config = path / "unet" / "config.json"
        body = json.loads(config.read_text())
        body["_null_class_label"] = null_label
        config.write_text(json.dumps(body))
    return path


def _inputs(path: Path, labels: list[int | None]) -> Path:
    cells = []
    for i, img in enumerate(photo_crops(len(labels), size=16)):
        buf = io.BytesIO()
        img.save(buf, format="PNG")
        cells.append({"bytes": buf.getvalue(), "path": f"p{i}.png"})
    table = pa.table(
        {
            "image": cells,
            "id": [f"p{i}" for i in range(len(labels))],
            "label": pa.array(labels, type=pa.int64()),
        }
    )
    pq.write_table(table, path)
    return path


def _request(name: str, model: Path, inputs: str, root: Path, **extra):
    body = {
        "dataset": name,
        "operation": {"kind": "img2img", "variants": 2, "strength": 0.5},
        "inputs": inputs,
        "model": {"id": str(model)},
        "output": str(root),
        "steps": 4,
        "shard_size": 4,
        # a random tiny model makes near-copies: the effect and set checks are not what this is about
        "quality": {"effect_checks": False, "set_checks": False, **extra.pop("quality", {})},
        **extra,
    }
    return parse_request(body)


def _rows(root: Path, name: str, key: str = "files") -> list[dict]:
    entry = get_version(Storage(str(root)), name, "latest")
    files = entry.files if key == "files" else entry.quarantine_files
    return [r for f in files for r in pq.read_table(root / f.key).to_pylist()]


def test_labels_flow_from_inputs_to_rows_and_on_to_the_next_version(tmp_path: Path) -> None:
    from augflow.flows.augment import augment

    model = _cond_model(tmp_path / "cond-null", null_label=CLASSES - 1)
    root = tmp_path / "out"
    inputs = _inputs(tmp_path / "in.parquet", [0, 1, None, 1])
    outcome = augment(_request("labelled", model, str(inputs), root))
    assert outcome.status == "registered" and outcome.num_rows == 8
    got = sorted((r["source_id"], r["variant"], r["class_label"]) for r in _rows(root, "labelled"))
    assert got == [
        ("p0", 0, 0),
        ("p0", 1, 0),
        ("p1", 0, 1),
        ("p1", 1, 1),
        ("p2", 0, None),  # no label: the model ran with its null label, the row says "unknown"
        ("p2", 1, None),
        ("p3", 0, 1),
        ("p3", 1, 1),
    ]
    # the registered version as the input of the next request: its class_label column carries on
    again = augment(_request("relabelled", model, "labelled@latest", root))
    assert again.status == "registered"
    labels = {r["source_id"]: r["class_label"] for r in _rows(root, "relabelled")}
    assert len(labels) == 8
    for row in _rows(root, "labelled"):
        assert labels[row["row_id"]] == row["class_label"]


def test_an_unlabelled_source_without_a_null_label_is_quarantined_with_the_reason(
    tmp_path: Path,
) -> None:
    from augflow.flows.augment import augment

    model = _cond_model(tmp_path / "cond", null_label=None)
    root = tmp_path / "out"
    inputs = _inputs(tmp_path / "in.parquet", [0, None, 2, 1])
    outcome = augment(
        _request("partly", model, str(inputs), root, quality={"max_quarantine_fraction": 0.5})
    )
    assert outcome.status == "registered"
    assert outcome.num_rows == 6 and outcome.num_quarantined == 2
    q = _rows(root, "partly", key="quarantine")
    assert [r["source_id"] for r in q] == ["p1", "p1"]
    assert "RequestError" in q[0]["reason"] and "no null label" in q[0]["reason"]
