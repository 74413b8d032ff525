"""bench/validate_memory.py at a tiny size: the gate's memory benchmark keeps working. Its numbers
at these sizes mean nothing; docs/quality-gate.md has the real ones."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow  # four fresh processes, each importing GX: ~30 s
def test_the_memory_benchmark_runs_and_prints_its_table() -> None:
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench.validate_memory",
            "--sizes",
            "200,400",
            "--shard-rows",
            "64",
            "--repeats",
            "1",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    # says what its numbers include and exclude
    assert "What the numbers include" in out and "effect_checks: false" in out
    assert "wrote 400 rows in 7 shard files" in out
    rows = [line for line in out.splitlines() if re.match(r"\| [\d,]+ \| ", line)]
    assert [r.split("|")[1:3] for r in rows] == [
        [" 200 ", " streaming "],
        [" 400 ", " streaming "],
        [" 200 ", " whole-frame "],
        [" 400 ", " whole-frame "],
    ]
    for row in rows:
        cells = [c.strip() for c in row.strip("|").split("|")]
        peak, after_imports, gate = float(cells[3]), float(cells[4]), float(cells[5])
        # a whole Python process with GX imported, and the gate's own share of it
        assert 100 < after_imports < peak < 4000
        assert gate == pytest.approx(peak - after_imports, abs=1)
        assert float(cells[7]) > 0  # wall seconds
