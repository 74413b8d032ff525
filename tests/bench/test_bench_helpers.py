"""Benchmark helpers: `bench.run --merge` and the steady-state rate."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _res(sizes: list[int], wall: float, load: float, sections: tuple[str, ...]) -> dict:
    e2e = {str(n): {"wall": wall * n} for n in sizes}
    res = {
        "smoke": False,
        "machine": {"loadavg_start": [load], "loadavg_end": [load], "bench_wall_s": wall},
        "config": {"e2e": {"sizes": sizes, "steps": 5}, "overlap": {"n": 1}},
        "gpu": "none",
    }
    if "e2e" in sections:
        res["e2e"] = {**e2e, "config": res["config"]["e2e"], "bare_tuning": {"threads": 2}}
    if "overlap" in sections:
        res["overlap"] = {"busy": wall}
    return res


def test_a_later_run_adds_sizes_and_replaces_what_it_measured_again(monkeypatch) -> None:
    monkeypatch.syspath_prepend(str(ROOT))
    from bench.run import _merged

    old = _res([16, 256], 1.0, 2.0, ("e2e", "overlap"))
    new = _res([256, 2048], 3.0, 5.0, ("e2e",))
    res = _merged(old, new)
    assert res["e2e"]["16"] == {"wall": 16.0}  # kept
    assert res["e2e"]["256"] == {"wall": 768.0} and res["e2e"]["2048"] == {"wall": 6144.0}
    assert res["config"]["e2e"]["sizes"] == res["e2e"]["config"]["sizes"] == [16, 256, 2048]
    assert res["overlap"] == {"busy": 1.0}  # not measured again: the old one stays
    assert [r["sections"] for r in res["runs"]] == [["e2e 16 256", "overlap"], ["e2e 256 2048"]]
    assert res["bench_wall_s"] == 4.0
    again = _merged(res, _res([], 0.5, 1.0, ("overlap",)))
    assert len(again["runs"]) == 3 and again["overlap"] == {"busy": 0.5}


def test_a_smoke_run_never_merges_into_real_numbers(monkeypatch) -> None:
    monkeypatch.syspath_prepend(str(ROOT))
    from bench.run import _merged

    smoke = {**_res([4], 1.0, 1.0, ("e2e",)), "smoke": True}
    with pytest.raises(SystemExit):
        _merged(_res([16], 1.0, 1.0, ("e2e",)), smoke)


def test_steady_rate_does_not_credit_other_workers_first_units(monkeypatch) -> None:
    monkeypatch.syspath_prepend(str(ROOT))
    from bench.common import steady_rate

    # two workers, 10 s per unit of 64, finishing side by side: the true rate is 12.8 items/s
    pairs = [(10.0, 64), (10.2, 64), (20.0, 64), (20.2, 64), (30.0, 64), (30.2, 64)]
    assert steady_rate(pairs, parallel=2) == pytest.approx(12.8)
    assert steady_rate(pairs) == pytest.approx(320 / 20.2)  # the one-worker reading: too fast
    # one worker: the first unit (start-up) is left out
    assert steady_rate([(5.0, 8), (7.0, 8), (9.0, 8)]) == pytest.approx(4.0)
    assert steady_rate([(10.0, 64), (10.2, 64)], parallel=2) is None  # no unit after the window
