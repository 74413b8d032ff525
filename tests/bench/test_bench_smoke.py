"""A short run of every benchmark (``bench.run --smoke``): keeps the benchmark code working in CI.
The numbers of a smoke run mean nothing; ``make bench`` makes the real ones."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


#: the benchmarks in two halves of similar length, so two test workers share them
HALVES = {
    "start-up": ("e2e", "warm"),
    "steady state": ("overlap", "scaling", "overhead", "memory", "storage"),
}


@pytest.mark.slow
@pytest.mark.timeout(1800)  # benchmarks each starting Ray or Prefect: slow on a busy box
@pytest.mark.parametrize("half", list(HALVES))
def test_every_benchmark_runs_and_writes_its_table(
    half: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.syspath_prepend(str(ROOT))
    monkeypatch.chdir(ROOT)
    from bench.run import ALL, main

    sections = HALVES[half]
    res = main(["--smoke", "--out", str(tmp_path), "--only", *sections])
    saved = json.loads((tmp_path / "bench.json").read_text())
    md = (tmp_path / "bench.md").read_text()
    assert {s for s in ALL if s in saved} == set(sections)

    if half == "start-up":
        e2e = res["e2e"]["4"]
        for arm in ("bare", "augflow", "raydata"):
            run = e2e["runs"][arm][0]
            # from process start: the first image comes before the result, the result before exit
            assert 0 < run["first_image_s"] < run["result_s"] < run["wall_s"] + 1, arm
        assert e2e["augflow"]["wall_s"]["n"] == 1 and e2e["ratios"]["b_over_a_wall"]["median"] > 0

        for mode in ("serve", "pool"):
            warm = res["warm"][mode]
            assert [q["state"] for q in warm["requests"]] == ["Completed", "Completed"], mode
            # the second request ran on the actor the first one started, without a second load
            assert warm["requests"][0]["pid"] == warm["requests"][1]["pid"], mode
            assert [a["model_loads"] for a in warm["actors"]] == [1], mode
        titles: tuple[str, ...] = ("## 1. End to end", "Warm on-demand")
        # the tables are made from the measured data, not typed in
        assert f"{e2e['augflow']['wall_s']['median']:.1f}" in md
    else:
        busy = res["overlap"]["device_busy"]
        assert set(busy) == {"0", "1"} and all(0 < v[0] <= 1 for v in busy.values())
        # bounded orchestration: a fixed handful of Prefect task runs, however many shards
        runs = {v["task_runs"] for v in saved["memory"].values()}
        assert len(runs) == 1 and runs.pop() < 10
        assert all(v["actor_peak_rss_mb"] for v in saved["memory"].values())
        assert all(0 < v["share"] < 1 for v in saved["storage"].values() if isinstance(v, dict))
        titles = ("## 3. The GPU critical path", "## 6. Memory")
    for title in titles:
        assert title in md, title
