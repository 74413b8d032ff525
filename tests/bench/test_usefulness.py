"""The usefulness benchmark: augflow's inputs, each seed's synthetic slice, and its results' shape.

These tests prove on pixels, not only on indices, that no test image reaches a classifier's
training data or augflow's inputs (scikit-learn's digits have no duplicate images, checked in
tests/models/training/test_digits.py with the split itself, so a pixel match is an index match).
The classifier and its statistics are tests/models/test_proxy.py.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
BUNDLED = ROOT / "models" / "bundled" / "ddim-digits16"


@pytest.fixture(autouse=True)
def _bench_importable(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    import torch

    monkeypatch.syspath_prepend(str(ROOT))
    # The benchmark trains with one thread per process; two threads on a busy 2-core box make
    # these tiny convolutions 50x slower (threads wait for each other).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _keys(images: np.ndarray) -> set[bytes]:
    return {im.tobytes() for im in images}


# --- augflow's inputs --------------------------------------------------------------------------


def test_augflow_inputs_hold_only_few_shot_images(tmp_path: Path) -> None:
    from bench.usefulness_data import input_indices, load, write_inputs

    digits = load()
    s = digits.split
    path = write_inputs(tmp_path / "in.parquet", digits, s.labelled[5])
    idx = input_indices(path)
    assert sorted(idx) == sorted(s.labelled[5])
    import pyarrow.parquet as pq

    table = pq.read_table(path)
    assert table.column_names == ["image", "row_id", "label"]
    assert table.column("label").to_pylist() == digits.labels[idx].tolist()


# --- pieces ------------------------------------------------------------------------------------


def test_each_seed_gets_its_own_slice_of_synthetic_data() -> None:
    from bench.usefulness import seed_samples, seed_variants
    from bench.usefulness_data import VersionRows

    n_src, per_seed, seeds = 3, 4, 2
    variants = np.tile(np.arange(per_seed * seeds), n_src)
    img = np.arange(len(variants), dtype=np.uint8)[:, None, None].repeat(16, 1).repeat(16, 2)
    rows = VersionRows(img, np.zeros(len(variants), np.int64), ["s"] * len(variants), variants)
    first = seed_variants(rows, 0, per_seed, 2)[0][:, 0, 0]
    second = seed_variants(rows, 1, per_seed, 2)[0][:, 0, 0]
    assert len(first) == len(second) == n_src * 2
    assert not set(first) & set(second)
    assert set(variants[first]) == {0, 1} and set(variants[second]) == {4, 5}

    n = 40  # 2 seeds × 2 per class × 10 classes, labels cycled like augflow's class_labels
    gen = VersionRows(
        np.arange(n, dtype=np.uint8)[:, None, None].repeat(16, 1).repeat(16, 2),
        (n - 1 - np.arange(n)) % 10,  # the label of position p is p % 10
        [f"generated/{i:09d}" for i in range(n)][::-1],  # row order must not matter
        np.zeros(n, np.int64),
    )
    a_x, a_y = seed_samples(gen, 0, 20, 1)
    b_x, b_y = seed_samples(gen, 1, 20, 2)
    assert sorted(a_y) == list(range(10)) and sorted(b_y) == sorted(list(range(10)) * 2)
    pos_a = {39 - int(v) for v in a_x[:, 0, 0]}
    pos_b = {39 - int(v) for v in b_x[:, 0, 0]}
    assert pos_a <= set(range(20)) and pos_b <= set(range(20, 40))


def test_a_lift_excludes_zero_only_when_its_whole_interval_is_on_one_side() -> None:
    # the interval arithmetic itself is the product's (tests/models/test_proxy.py)
    from bench.usefulness_stats import excludes_zero, paired_lift

    assert excludes_zero(paired_lift([0.8, 0.9, 0.7], [0.7, 0.8, 0.6]))  # same gap every seed
    assert excludes_zero(paired_lift([0.6, 0.7, 0.5], [0.7, 0.8, 0.6]))  # same loss every seed
    assert not excludes_zero(paired_lift([0.8, 0.6, 0.7], [0.7, 0.7, 0.7]))


# --- the whole benchmark, tiny -----------------------------------------------------------------


@pytest.mark.slow
def test_smoke_run_writes_the_issue_shape_and_never_trains_on_test(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, prefect_server: str
) -> None:
    import bench.usefulness as bu
    from bench.usefulness_data import index_of, input_indices, load, read_version

    trained: list = []
    original = bu.Pool.map

    def recording(self, jobs):
        jobs = list(jobs)
        trained.extend(jobs)
        return original(self, jobs)

    monkeypatch.setattr(bu.Pool, "map", recording)
    work = tmp_path / "work"
    rc = bu.main(["--smoke", "--out", str(tmp_path / "out"), "--work", str(work)])

    saved = json.loads((tmp_path / "out" / "usefulness.json").read_text())
    assert set(saved) == {"arms", "shots_per_class", "seeds"}
    assert list(saved["arms"]) == ["real", "classical", "img2img", "generate", "classical+img2img"]
    assert saved["shots_per_class"] == 5 and saved["seeds"] == [0, 1]
    for arm, body in saved["arms"].items():
        assert {"mean", "ci95"} <= set(body), arm
        assert body["mean"] is not None, body.get("error")  # every arm runs
        lo, hi = body["ci95"]
        assert 0 <= body["mean"] <= 1 and lo <= body["mean"] <= hi
        for lift in ("lift_over_real", "lift_over_classical"):
            assert set(body[lift]) == {"mean", "ci95"}
    assert rc == 0
    assert saved["arms"]["real"]["lift_over_real"]["mean"] == 0

    details = json.loads((tmp_path / "out" / "usefulness-details.json").read_text())
    assert (
        "## Test accuracy, 5 labelled images per class"
        in (tmp_path / "out" / "usefulness.md").read_text()
    )
    # the generate arm's data is a registered version whose rows carry their labels
    gen_ref = next(r["ref"] for r in details["augflow"]["runs"] if "generate" in r["ref"])
    rows = read_version(str(work / "data"), gen_ref)
    assert len(rows.labels) == 10 * 1 * 2  # classes × samples per class × seeds
    assert sorted(rows.labels) == sorted(list(range(10)) * 2)
    # the img2img arm's rows carry their source's label, copied by augflow from the inputs
    img_ref = next(r["ref"] for r in details["augflow"]["runs"] if "img2img" in r["ref"])
    rows = read_version(str(work / "data"), img_ref)
    digits_labels = load().labels
    assert len(rows.labels) == 50 * 2  # 5-shot sources × (1 variant × 2 seeds)
    assert rows.labels.tolist() == [digits_labels[index_of(s)] for s in rows.source_ids]

    digits = load()
    s = digits.split
    test_px, val_px = _keys(digits.images[s.test]), _keys(digits.images[s.val])
    for path in (work / "inputs").glob("*.parquet"):
        idx = input_indices(path)
        assert set(idx) <= set(s.labelled[10]), path
    assert trained
    for job in trained:
        seen = _keys(job.real_x)
        if job.synth_x is not None:
            seen |= _keys(job.synth_x)
        assert not seen & test_px, "a classifier trained on a test image"
        assert not seen & val_px, "a classifier trained on a val image"
        assert _keys(job.real_x) <= _keys(digits.images[s.labelled[10]])
        assert _keys(job.eval_x) in (test_px, val_px)


@pytest.mark.slow
def test_the_cli_path_registers_a_version_the_benchmark_reads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, prefect_server: str
) -> None:
    from bench.usefulness_augflow import Augflow
    from bench.usefulness_data import read_version

    # the CLI subprocess uses this worker's server instead of starting one of its own
    monkeypatch.setenv("PREFECT_API_URL", prefect_server)

    aug = Augflow(tmp_path, BUNDLED, "cli", workers=1)
    body = aug.request(
        "usefulness-cli",
        {"kind": "generate", "num_images": 4, "class_labels": [7, 1]},
        steps=2,
        shard_size=4,
    )
    ref = aug.run(body)
    assert ref.startswith("usefulness-cli@")
    rows = read_version(aug.output, ref)
    assert rows.labels.tolist() == [7, 1, 7, 1]
    assert rows.images.shape == (4, 16, 16)
