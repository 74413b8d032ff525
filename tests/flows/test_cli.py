"""The `augflow` command as a user runs it: real processes, a real Prefect server, real Ray."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

AUGFLOW = [sys.executable, "-m", "augflow.flows.cli"]


def _write(path: Path, body: dict) -> Path:
    path.write_text(yaml.safe_dump(body))
    return path


def _env(api_url: str | None) -> dict[str, str]:
    env = dict(os.environ)
    if api_url:
        env["PREFECT_API_URL"] = api_url
    return env


def test_bad_field_fails_before_anything_runs(tmp_path: Path) -> None:
    req = _write(
        tmp_path / "bad.yaml",
        {
            "dataset": "cats",
            "operation": {"kind": "img2img", "strength": 1.7},
            "inputs": str(tmp_path),
            "model": {"id": str(tmp_path / "no-such-model")},
            "output": str(tmp_path / "out"),
        },
    )
    proc = subprocess.run([*AUGFLOW, "run", str(req)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert "operation.strength" in proc.stderr and "less than or equal to 1" in proc.stderr
    assert not (tmp_path / "out").exists()


def test_unknown_field_is_named(tmp_path: Path) -> None:
    req = _write(
        tmp_path / "typo.yaml",
        {
            "dataset": "cats",
            "operation": {"kind": "generate", "num_images": 2},
            "model": {"id": "x"},
            "stepz": 3,
        },
    )
    proc = subprocess.run([*AUGFLOW, "plan", str(req)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "`stepz`" in proc.stderr


def test_plan_computes_nothing(tmp_path: Path, photos_dir: Path) -> None:
    req = _write(
        tmp_path / "plan.yaml",
        {
            "dataset": "photos",
            "operation": {"kind": "img2img", "variants": 3},
            "inputs": str(photos_dir),
            "model": {"id": "org/model"},
            "shard_size": 6,
            "output": str(tmp_path / "out"),
        },
    )
    proc = subprocess.run(
        [*AUGFLOW, "plan", str(req), "--json"], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    plan = json.loads(proc.stdout)
    assert plan["images"] == 18 and plan["shards"] == 3  # 6 files x 3 variants, 2 sources a shard
    assert len(plan["request_hash"]) == 64
    assert all(uri.startswith(f"file://{tmp_path}/out/runs/") for uri in plan["data_files"])
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_sigkill_mid_run_then_rerun_loses_and_duplicates_nothing(
    tiny_model: Path, tmp_path: Path, prefect_server: str
) -> None:
    out = tmp_path / "out"
    req = _write(
        tmp_path / "req.yaml",
        {
            "dataset": "killed",
            "operation": {"kind": "generate", "num_images": 40},
            "model": {"id": str(tiny_model)},
            "output": str(out),
            "steps": 60,
            "shard_size": 2,
            "execution": {"workers": 1},
        },
    )
    proc = subprocess.Popen(
        [*AUGFLOW, "run", str(req)],
        env=_env(prefect_server),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    commits = out / "runs"
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and len(list(commits.rglob("commits/*.json"))) < 3:
        assert proc.poll() is None, proc.communicate()[1].decode()[-3000:]
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    done_before = len(list(commits.rglob("commits/*.json")))
    assert 3 <= done_before < 20, "the run must be killed mid-way"
    assert not (out / "registry").exists()

    rerun = subprocess.run(
        [*AUGFLOW, "run", str(req)],
        env=_env(prefect_server),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    # A shard in flight at the kill may still have landed its commit; either way every shard is
    # computed exactly once across the two runs, and the re-run reuses what was committed.
    import re

    counts = re.search(r"(\d+) shards computed, (\d+) reused", rerun.stderr)
    assert counts, rerun.stderr[-2000:]
    computed, reused = int(counts[1]), int(counts[2])
    assert computed + reused == 20 and reused >= done_before and computed >= 1
    assert rerun.stdout.startswith("killed@")

    show = subprocess.run(
        [*AUGFLOW, "datasets", "show", "killed", "--json", "--root", str(out)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert show.returncode == 0, show.stderr
    entry = json.loads(show.stdout)
    assert entry["num_rows"] == 40 and entry["checks_passed"] is True
    assert len(entry["files"]) == 20
    row_ids = [
        r
        for f in entry["files"]
        for r in pq.read_table(f["uri"].removeprefix("file://"), columns=["row_id"])
        .column(0)
        .to_pylist()
    ]
    assert len(row_ids) == 40 and len(set(row_ids)) == 40


@pytest.mark.slow
def test_quality_failure_exits_nonzero_with_report(
    nan_model: Path, tmp_path: Path, prefect_server: str
) -> None:
    req = _write(
        tmp_path / "nan.yaml",
        {
            "dataset": "broken",
            "operation": {"kind": "generate", "num_images": 3},
            "model": {"id": str(nan_model)},
            "output": str(tmp_path / "out"),
            "steps": 2,
        },
    )
    proc = subprocess.run(
        [*AUGFLOW, "run", str(req)],
        env=_env(prefect_server),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "nothing was registered" in proc.stderr and "has_nan" in proc.stderr
    report = proc.stderr.rsplit("\nreport: ", 1)[1].split()[0]
    assert Path(report.removeprefix("file://")).is_file()
    listing = subprocess.run(
        [*AUGFLOW, "datasets", "list", "--json", "--root", str(tmp_path / "out")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert json.loads(listing.stdout) == []
