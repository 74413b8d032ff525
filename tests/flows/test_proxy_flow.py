"""The proxy usefulness check end to end (issue 13): img2img versions of the 10-shot digits made
by the bundled class-conditional generator through the real flow, judged by the gate's
``quality.min_proxy_lift`` and by :func:`augflow.tasks.proxy.evaluate_proxy`."""

from __future__ import annotations

import io
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from augflow.models.training.digits import digits_split, load_digits_16
from augflow.schemas import QualityGateError, parse_request
from augflow.tasks.proxy import evaluate_proxy
from augflow.tasks.register import get_version
from augflow.tasks.storage import Storage

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("prefect_server", "ray_local")]

MODEL = Path(__file__).resolve().parents[2] / "models" / "bundled" / "ddim-digits16"


def _inputs(path: Path, shift_labels: int) -> Path:
    images, labels = load_digits_16()
    idx = digits_split(labels).labelled[10]
    cells = []
    for i in idx:
        buf = io.BytesIO()
        Image.fromarray(images[i]).save(buf, format="PNG")
        cells.append({"bytes": buf.getvalue(), "path": f"digit-{i:04d}.png"})
    table = pa.table(
        {
            "image": cells,
            "row_id": [f"digit-{i:04d}" for i in idx],
            "label": pa.array([(int(labels[i]) + shift_labels) % 10 for i in idx], pa.int64()),
        }
    )
    pq.write_table(table, path)
    return path


def _request(name: str, inputs: Path, root: Path, **quality: float):
    return parse_request(
        {
            "dataset": name,
            "operation": {"kind": "img2img", "variants": 2, "strength": 0.3},
            "inputs": str(inputs),
            "model": {"id": str(MODEL)},
            "output": str(root),
            "steps": 10,
            "shard_size": 100,
            "compute": {"micro_batch": 16},
            # strength 0.3 variants are near-copies by design here: only the proxy is under test
            "quality": {"effect_checks": False, "set_checks": False, **quality},
        }
    )


def test_the_gate_and_evaluate_measure_the_proxy_lift(tmp_path: Path) -> None:
    from augflow.flows.augment import augment

    root = tmp_path / "out"
    right = _inputs(tmp_path / "right.parquet", 0)
    wrong = _inputs(tmp_path / "wrong.parquet", 1)  # the same images, every label off by one

    # the gate runs the proxy when asked, and records it in the report
    outcome = augment(_request("right", right, root, min_proxy_lift=-1.0))
    assert outcome.status == "registered"
    storage = Storage(str(root))
    entry = get_version(storage, "right", "latest")
    report = storage.read_bytes(entry.quality.report_key).decode()
    assert "proxy_lift" in report and "proxy lift" in report

    # ... and fails a version whose lift is below the bar
    with pytest.raises(QualityGateError) as failed:
        augment(_request("right-strict", right, root, min_proxy_lift=0.9))
    assert any("proxy_lift" in line for line in failed.value.failed)

    # a version whose rows carry wrong labels, judged against the true labels, lowers the lift;
    # measured through the command line, `augflow evaluate NAME@VERSION --proxy`
    import json

    from typer.testing import CliRunner

    from augflow.flows.evaluate import app

    augment(_request("wrong", wrong, root))
    good = evaluate_proxy(str(root), "right@latest", seeds=3)
    res = CliRunner().invoke(
        app,
        [
            "wrong@latest",
            "--root",
            str(root),
            "--proxy",
            "--real",
            str(right),
            "--seeds",
            "3",
            "--json",
        ],
    )
    assert res.exit_code in (0, 1), res.output
    bad = json.loads(res.stdout)["proxy"]
    assert good.real["per_seed"] == bad["real"]["per_seed"]  # same real data, split and seeds
    assert good.synthetic == bad["synthetic"] == 100  # the variants of the 50 train sources
    assert bad["lift"]["mean"] < good.lift["mean"] - 0.1
    assert bad["lift"]["ci95"][1] < 0
