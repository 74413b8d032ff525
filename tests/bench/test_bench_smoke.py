"""A seconds-per-case run of every benchmark (``bench.run --smoke``): keeps the benchmark code
working in CI. The numbers of a smoke run mean nothing; ``make bench`` makes the real ones."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_every_benchmark_runs_and_writes_its_table(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.syspath_prepend(str(ROOT))
    monkeypatch.chdir(ROOT)
    from bench.run import main

    res = main(["--smoke", "--out", str(tmp_path)])
    saved = json.loads((tmp_path / "bench.json").read_text())
    md = (tmp_path / "bench.md").read_text()
    for section in ("efficiency", "scaling", "overhead", "memory", "storage"):
        assert section in saved, section
    eff = res["efficiency"]
    for variant in ("bare", "augflow", "raydata", "augflow_batch_invariant"):
        assert eff[variant]["steady_images_per_s"] > 0, variant
    assert eff["augflow"]["status"] == "registered"
    assert eff["augflow"]["num_rows"] == eff["raydata"]["num_rows"] == 4
    # bounded orchestration: a fixed handful of Prefect task runs, however many shards
    runs = {v["task_runs"] for v in saved["memory"].values()}
    assert len(runs) == 1 and runs.pop() < 10
    assert all(v["actor_peak_rss_mb"] for v in saved["memory"].values())
    assert all(0 < v["share"] < 1 for v in saved["storage"].values() if isinstance(v, dict))
    assert "## 1. Efficiency" in md and "## 3. Memory" in md
    # the table is made from the measured data, not typed in
    for variant in ("bare", "augflow", "raydata"):
        assert f"{eff[variant]['steady_images_per_s']:.3f}" in md, variant
