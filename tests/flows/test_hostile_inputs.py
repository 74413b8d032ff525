"""Hostile inputs and requests through the real flow and the real command line.

A folder holding every kind of file a user's bucket collects goes through a real Prefect server and
real Ray: every object ends as a row, a quarantine row with a reason, or a counted skip; shards
whose every input was quarantined leave no data file; the registered version reads with
`datasets`, pyarrow and Ray Data, and an incremental refresh carries those shards. Bad requests and
bad inputs exit 2 from `plan` and `run` alike, before anything starts.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import yaml
from conftest import photo_crops
from PIL import Image

from augflow.schemas import parse_request
from augflow.tasks.commits import read_marker
from augflow.tasks.inputs import SKIP_DATASET_METADATA, SKIP_HIDDEN, SKIP_LINKED_FOLDER
from augflow.tasks.layout import RunLayout
from augflow.tasks.register import file_uris, get_version
from augflow.tasks.storage import Storage

AUGFLOW = [sys.executable, "-m", "augflow.flows.cli"]


def _bytes(img: Image.Image, fmt: str, **kw: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def _hostile_folder(root: Path) -> dict[str, str | None]:
    """Writes the folder; returns every object's expected fate: None for a row, else a reason
    fragment (quarantine) or "skip:<rule>". Names starting with "a-" sort first, so the first two
    shards of 4 hold only unusable files."""
    root.mkdir(parents=True)
    crops = photo_crops(8, size=24)
    fate: dict[str, str | None] = {}

    def put(name: str, data: bytes, expect: str | None) -> None:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
        fate[name] = expect

    anim = _bytes(crops[0], "GIF", save_all=True, append_images=crops[1:3])
    put("a-anim.gif", anim, "unsupported format: GIF (animated)")
    put("a-dot.png", _bytes(Image.new("RGB", (1, 1)), "PNG"), "too small: 1x1")
    put("a-empty.jpg", b"", "empty file")
    put("a-paper.png", b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n", "a PDF document")
    os.mkfifo(root / "a-pipe.png")
    fate["a-pipe.png"] = "not a regular file"
    put("a-strip.png", _bytes(Image.new("RGB", (16, 4000), (90, 9, 9)), "PNG"), "too elongated")
    put("a-text.txt", b"shopping list\n", "not an image: text")
    jpeg = _bytes(crops[3], "JPEG")
    put("a-truncated.jpg", jpeg[: len(jpeg) // 3], "corrupt")
    put("b-static.gif", _bytes(crops[4], "GIF"), None)
    put("b-phone.jpg", _bytes(crops[5], "MPO", save_all=True, append_images=crops[6:8]), None)
    for i in range(4):
        put(f"photo-{i}.png", _bytes(crops[i], "PNG"), None)
    put("sub/photo-4.jpg", _bytes(crops[7], "JPEG", quality=90), None)
    put("noext", _bytes(crops[2], "WEBP"), None)  # no extension: sniffed as WEBP
    put(".DS_Store", b"\x00\x00\x00\x01Bud1", f"skip:{SKIP_HIDDEN}")
    put(".cache/thumb.png", _bytes(crops[0], "PNG"), f"skip:{SKIP_HIDDEN}")
    put("_SUCCESS", b"", f"skip:{SKIP_DATASET_METADATA}")
    (root / "again").symlink_to(root / "sub")
    fate["again"] = f"skip:{SKIP_LINKED_FOLDER}"
    return fate


def _request(model: Path, inputs: Path, out: Path, dataset: str = "hostile"):
    return parse_request(
        {
            "dataset": dataset,
            "operation": {"kind": "denoise", "noise_level": 20},
            "inputs": str(inputs),
            "model": {"id": str(model)},
            "output": str(out),
            "steps": 2,
            "shard_size": 4,
            "quality": {"max_quarantine_fraction": 0.6},
        }
    )


@pytest.mark.slow
@pytest.mark.usefixtures("prefect_server", "ray_local")
def test_every_object_is_a_row_a_quarantine_row_or_a_counted_skip(
    tiny_model: Path, tmp_path: Path
) -> None:
    import ray
    from datasets import load_dataset

    from augflow.flows.augment import augment

    inputs, out = tmp_path / "in", tmp_path / "out"
    fate = _hostile_folder(inputs)
    request = _request(tiny_model, inputs, out)
    first = augment(request)

    expected_rows = {n for n, f in fate.items() if f is None}
    expected_q = {n: f for n, f in fate.items() if f is not None and not f.startswith("skip:")}
    skips: dict[str, int] = {}
    for f in fate.values():
        if f is not None and f.startswith("skip:"):
            skips[f.removeprefix("skip:")] = skips.get(f.removeprefix("skip:"), 0) + 1
    skips[SKIP_HIDDEN] = 2  # .DS_Store and .cache/thumb.png
    assert first.status == "registered"
    assert first.skipped == skips
    assert (first.num_rows, first.num_quarantined) == (len(expected_rows), len(expected_q))

    storage = Storage(str(out))
    entry = get_version(storage, "hostile", first.version)
    table = pq.ParquetDataset([str(out / f.key) for f in entry.files]).read()
    assert "source_note" in table.schema.names
    assert set(table.column("source_id").to_pylist()) == expected_rows
    notes = dict(
        zip(
            table.column("source_id").to_pylist(),
            table.column("source_note").to_pylist(),
            strict=True,
        )
    )
    assert notes["b-phone.jpg"] == "MPO multi-picture JPEG: the first of 3 images is used"
    quarantine = pq.ParquetDataset([str(out / f.key) for f in entry.quarantine_files]).read()
    reasons = dict(
        zip(
            quarantine.column("source_id").to_pylist(),
            quarantine.column("reason").to_pylist(),
            strict=True,
        )
    )
    assert set(reasons) == set(expected_q)
    for name, fragment in expected_q.items():
        assert fragment in reasons[name], (name, reasons[name])

    # Two shards held only unusable files: committed with a marker and a quarantine file, no
    # data file; no 0-row file exists anywhere, and the entry lists only files with rows.
    layout = RunLayout(request.request_hash)
    markers = [read_marker(storage, k) for k in storage.list(layout.commits)]
    empty = [m for m in markers if m.num_rows == 0]
    assert len(empty) == 2 and all(m.data_file is None for m in empty)
    assert all(pq.read_metadata(p).num_rows > 0 for p in out.rglob("shards/*.parquet"))
    assert len(entry.files) == 2 and all(f.rows > 0 for f in entry.files)
    assert len(entry.quarantine_files) == 2

    # Every documented reader, one line each, on the version as registered.
    uris = file_uris(storage, entry)
    paths = [u.removeprefix("file://") for u in uris]
    assert len(load_dataset("parquet", data_files=paths, split="train")) == first.num_rows
    assert pq.read_table(paths).num_rows == first.num_rows
    assert ray.data.read_parquet(paths).count() == first.num_rows
    decoded = load_dataset("parquet", data_files=paths, split="train")[0]["image"]
    assert np.asarray(decoded).shape[2] == 3

    # An incremental refresh carries the quarantine-only shards: their sources are seen, not
    # planned again, and the new version reads the same way.
    (inputs / "zz-new.png").write_bytes(_bytes(photo_crops(9, size=24)[8], "PNG"))
    second = augment(request)
    assert second.status == "registered" and second.version != first.version
    assert second.shards_computed == 1
    assert second.num_rows == first.num_rows + 1
    assert second.num_quarantined == first.num_quarantined
    entry2 = get_version(storage, "hostile", second.version)
    paths2 = [u.removeprefix("file://") for u in file_uris(storage, entry2)]
    assert len(load_dataset("parquet", data_files=paths2, split="train")) == second.num_rows
    assert ray.data.read_parquet(paths2).count() == second.num_rows
    assert augment(request).status == "already_registered"


def _write(path: Path, body: dict | bytes) -> Path:
    if isinstance(body, bytes):
        path.write_bytes(body)
    else:
        path.write_text(yaml.safe_dump(body))
    return path


def test_plan_accounts_for_every_object(tmp_path: Path) -> None:
    inputs = tmp_path / "in"
    fate = _hostile_folder(inputs)
    req = _write(
        tmp_path / "req.yaml",
        {
            "dataset": "hostile",
            "operation": {"kind": "denoise"},
            "inputs": str(inputs),
            "model": {"id": "org/model"},
            "output": str(tmp_path / "out"),
            "shard_size": 4,
        },
    )
    proc = subprocess.run(
        [*AUGFLOW, "plan", str(req), "--json"], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    plan = json.loads(proc.stdout)
    objects = len([p for p in inputs.rglob("*") if not p.is_dir() or p.is_symlink()])
    assert plan["inputs"] == plan["images"] == objects - sum(plan["skipped"].values())
    assert plan["inputs"] == len([f for f in fate.values() if not (f or "").startswith("skip:")])
    assert plan["skipped"] == {SKIP_HIDDEN: 2, SKIP_DATASET_METADATA: 1, SKIP_LINKED_FOLDER: 1}
    text = subprocess.run([*AUGFLOW, "plan", str(req)], capture_output=True, text=True, timeout=120)
    assert "skipped       2 objects: hidden" in text.stdout


def _cases(tmp_path: Path) -> dict[str, Path]:
    base = {"dataset": "cats", "model": {"id": "org/model"}, "output": str(tmp_path / "out")}
    (tmp_path / "only-hidden").mkdir()
    (tmp_path / "only-hidden" / ".DS_Store").write_bytes(b"x")
    denoise = {**base, "operation": {"kind": "denoise"}}
    return {
        "missing folder": _write(
            tmp_path / "a.yaml", {**denoise, "inputs": str(tmp_path / "nope")}
        ),
        "only hidden files": _write(
            tmp_path / "b.yaml", {**denoise, "inputs": str(tmp_path / "only-hidden")}
        ),
        "unknown name@version": _write(tmp_path / "c.yaml", {**denoise, "inputs": "cats@v404"}),
        "binary request file": _write(tmp_path / "d.yaml", b"\x89PNG\r\n\x1a\n\x00\x00\x00"),
        "1e8 shards": _write(
            tmp_path / "e.yaml",
            {**base, "operation": {"kind": "generate", "num_images": 10**8}, "shard_size": 1},
        ),
        "nan": _write(
            tmp_path / "f.yaml",
            b"dataset: cats\nmodel: {id: m}\noperation: {kind: generate, num_images: 2}\n"
            b"quality: {min_faithfulness_psnr: .nan}\n",
        ),
    }


@pytest.mark.slow
def test_plan_and_run_refuse_bad_inputs_and_requests_with_exit_2(tmp_path: Path) -> None:
    for what, req in _cases(tmp_path).items():
        for command in ("plan", "run"):
            proc = subprocess.run(
                [*AUGFLOW, command, str(req)], capture_output=True, text=True, timeout=180
            )
            assert proc.returncode == 2, (what, command, proc.stderr)
            assert "error:" in proc.stderr and "Traceback" not in proc.stderr, (what, command)
    assert not (tmp_path / "out").exists()  # nothing ran, nothing was written


@pytest.mark.slow
def test_run_summary_shows_the_skips(tiny_model: Path, tmp_path: Path, prefect_server: str) -> None:
    inputs = tmp_path / "in"
    inputs.mkdir()
    for i, crop in enumerate(photo_crops(2, size=24)):
        (inputs / f"photo-{i}.png").write_bytes(_bytes(crop, "PNG"))
    (inputs / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
    (inputs / "._photo-0.png").write_bytes(b"AppleDouble")
    (inputs / "_SUCCESS").write_bytes(b"")
    req = _write(
        tmp_path / "req.yaml",
        {
            "dataset": "skips",
            "operation": {"kind": "denoise", "noise_level": 20},
            "inputs": str(inputs),
            "model": {"id": str(tiny_model)},
            "output": str(tmp_path / "out"),
            "steps": 2,
            "execution": {"workers": 1},
        },
    )
    proc = subprocess.run(
        [*AUGFLOW, "run", str(req)],
        env={**os.environ, "PREFECT_API_URL": prefect_server},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = proc.stdout + proc.stderr
    assert "2 rows (0 quarantined)" in summary, summary[-2000:]
    assert f"skipped 2 input objects: {SKIP_HIDDEN}" in summary
    assert f"skipped 1 input object: {SKIP_DATASET_METADATA}" in summary
