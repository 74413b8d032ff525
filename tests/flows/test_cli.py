"""The `augflow` command as a user runs it: real processes, a real Prefect server, real Ray."""

from __future__ import annotations

import io
import json
import os
import re
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
    # GX's Data Docs of the failed validation, beside the report, named by the summary
    docs = proc.stderr.rsplit("\ndata docs: ", 1)[1].split()[0]
    assert docs == report.rsplit("/", 1)[0] + "/data-docs/index.html"
    assert Path(docs.removeprefix("file://")).is_file()
    listing = subprocess.run(
        [*AUGFLOW, "datasets", "list", "--json", "--root", str(tmp_path / "out")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert json.loads(listing.stdout) == []


def _cli(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None):
    return subprocess.run(
        [*AUGFLOW, *args], capture_output=True, text=True, timeout=300, env=env, cwd=cwd
    )


def test_version() -> None:
    proc = _cli("--version")
    assert proc.returncode == 0 and proc.stdout.startswith("augflow 0.1.0")


def test_request_paths_are_relative_to_the_request_file(tmp_path: Path, photos_dir: Path) -> None:
    folder = tmp_path / "requests"
    folder.mkdir()
    (folder / "in").symlink_to(photos_dir)
    req = _write(
        folder / "rel.yaml",
        {
            "dataset": "rel",
            "operation": {"kind": "denoise"},
            "inputs": "in",
            "output": "../out",
            "model": {"id": "org/model"},
        },
    )
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    proc = _cli("plan", str(req), "--json", cwd=elsewhere)
    assert proc.returncode == 0, proc.stderr
    plan = json.loads(proc.stdout)
    assert plan["root"] == f"file://{tmp_path}/out" and plan["images"] == 6
    assert not (elsewhere / "out").exists() and not (tmp_path / "out").exists()


def test_one_root_option_for_every_command_and_augflow_root(tmp_path: Path) -> None:
    body = {
        "dataset": "r",
        "operation": {"kind": "generate", "num_images": 2},
        "model": {"id": "o/m"},
    }
    req = _write(tmp_path / "r.yaml", body)
    env = {**os.environ, "AUGFLOW_ROOT": str(tmp_path / "env-root")}

    def root_of(path: Path, *args: str) -> str:
        proc = _cli("plan", str(path), "--json", *args, env=env)
        assert proc.returncode == 0, proc.stderr
        return json.loads(proc.stdout)["root"]

    assert root_of(req) == f"file://{tmp_path}/env-root"  # AUGFLOW_ROOT when the request says none
    with_output = _write(tmp_path / "o.yaml", {**body, "output": "mine"})
    assert root_of(with_output) == f"file://{tmp_path}/mine"  # the request's own output next
    assert root_of(with_output, "--root", str(tmp_path / "a")) == f"file://{tmp_path}/a"
    assert root_of(with_output, "--output", str(tmp_path / "b")) == f"file://{tmp_path}/b"

    # datasets commands: --root, --output, AUGFLOW_ROOT; no registry there is said and exits 1
    for args in ((), ("--root", str(tmp_path / "x")), ("--output", str(tmp_path / "y"))):
        proc = _cli("datasets", "list", *args, env=env)
        assert proc.returncode == 1
        where = args[1] if args else str(tmp_path / "env-root")
        assert f"no registry under file://{where}" in proc.stderr
    listing = _cli("datasets", "list", "--json", env=env)
    assert listing.returncode == 1 and json.loads(listing.stdout) == []
    show = _cli("datasets", "show", "cats@v1", env=env)
    assert show.returncode == 1 and "no registry under" in show.stderr
    bad = _cli("datasets", "show", "Cats@v1", env=env)
    assert bad.returncode == 2 and "not a valid dataset name" in bad.stderr


def test_plan_says_when_the_request_is_registered_and_export_reads_it(
    tiny_model: Path, tmp_path: Path
) -> None:
    from versions import make_version

    root = tmp_path / "root"
    entry = make_version(root, tiny_model, "cats", num_images=3, seed=4)
    req = _write(
        tmp_path / "same.yaml",
        {
            "dataset": "cats",
            "operation": {"kind": "generate", "num_images": 3},
            "model": {"id": str(tiny_model)},
            "output": str(root),
            "steps": 2,
            "seed": 4,
            "shard_size": 2,
        },
    )
    proc = _cli("plan", str(req))
    assert proc.returncode == 0, proc.stderr
    assert f"cats@{entry.version} is already registered" in proc.stdout
    assert "would compute nothing" in proc.stdout
    as_json = json.loads(_cli("plan", str(req), "--json").stdout)
    assert as_json["registered"] is True and as_json["would_compute_shards"] == 0

    other = _write(tmp_path / "more.yaml", {**yaml.safe_load(req.read_text()), "seed": 5})
    text = _cli("plan", str(other)).stdout
    assert "a run would compute 2 shards" in text and "already registered" not in text

    listing = _cli("datasets", "list", "--root", str(root))
    assert listing.returncode == 0 and "cats" in listing.stdout
    show = json.loads(_cli("datasets", "show", "cats", "--root", str(root), "--json").stdout)
    assert show["config_name"] == f"cats@{entry.version}"
    assert [f["uri"] for f in show["files"]] == [f"file://{root}/{f.key}" for f in entry.files]

    dest = tmp_path / "wds"
    export = _cli(
        "datasets", "export", f"cats@{entry.version}", "--format", "webdataset",
        "--to", str(dest), "--root", str(root), "--samples-per-shard", "2",
    )  # fmt: skip
    assert export.returncode == 0, export.stderr
    assert export.stdout.strip() == f"file://{dest}/cats-{entry.version}-{{000000..000001}}.tar"
    assert "exported cats@" in export.stderr and "3 rows in 2 shards" in export.stderr
    bad = _cli(
        "datasets", "export", "cats", "--format", "tfrecord", "--to", str(dest), "--root", str(root)
    )
    assert bad.returncode == 2 and "--format must be one of" in bad.stderr
    card = _cli("datasets", "card", "--root", str(root))
    assert card.returncode == 0 and card.stdout.strip() == f"file://{root}/README.md"


@pytest.mark.slow
def test_a_run_keeps_the_terminal_for_augflow_and_names_its_log(
    tiny_model: Path, tmp_path: Path, prefect_server: str
) -> None:
    req = _write(
        tmp_path / "quiet.yaml",
        {
            "dataset": "quiet",
            "operation": {"kind": "generate", "num_images": 4},
            "model": {"id": str(tiny_model)},
            "output": "out",  # relative to the request file
            "steps": 2,
            "shard_size": 2,
            "card": {"license": "mit", "description": "Quiet run."},
        },
    )
    env = {**_env(prefect_server), "AUGFLOW_LOG_DIR": str(tmp_path / "logs")}
    proc = subprocess.run(
        [*AUGFLOW, "run", str(req)], env=env, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    # stdout: the one machine-readable line; stderr: phases (not a terminal) and the summary
    assert proc.stdout.startswith("quiet@") and len(proc.stdout.splitlines()) == 1
    lines = proc.stderr.splitlines()
    ours = ("starting", "planning", "computing", "validating", "registering", "registered:",
            "preview:", "quality report:", "data docs:", "card:", "log:")  # fmt: skip
    assert all(line.startswith(ours) for line in lines), proc.stderr
    assert "computing 4 images" in lines
    log = Path(lines[-1].removeprefix("log: "))
    assert log.parent == tmp_path / "logs" and log.is_file()
    logged = log.read_text()
    assert "Task run 'execute" in logged  # Prefect's own lines went to the log
    card = (tmp_path / "out" / "README.md").read_text()
    assert "license: mit" in card and "Quiet run." in card
    # GX Data Docs next to the Markdown report, which stays; no GX line reached the terminal
    summary = {line.split(": ", 1)[0]: line.split(": ", 1)[1] for line in lines if ": " in line}
    report = Path(summary["quality report"].removeprefix("file://"))
    docs = Path(summary["data docs"].removeprefix("file://"))
    assert report.is_file() and docs == report.parent / "data-docs" / "index.html"
    assert "expectations/augflow-quiet.html" in docs.read_text()
    assert "great_expectations" not in proc.stderr


def _shown(err: io.StringIO) -> str:
    # the text of the frames drawn so far, without the terminal's escape codes
    return re.sub(r"\x1b\[[0-9;?]*[a-zA-Z]", "", err.getvalue())


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_the_live_display_shows_the_phase_images_done_rate_and_eta() -> None:
    from augflow.flows.cli import _Display
    from augflow.tasks import progress

    class Clock:
        now = 100.0

        def __call__(self) -> float:
            return self.now

    clock, err = Clock(), _Terminal()
    with _Display(err, "cats") as display:
        assert display.live  # a terminal gets the live bar, not a line per phase
        display.tracker = progress.Tracker(clock)
        display(progress.Planned(total_rows=20, shards=4))
        display(progress.Phase("computing"))
        clock.now = 130.0
        display(progress.RowsDone("a", 1))  # each micro-batch moves the bar
        display.bar.refresh()
        assert re.search(r"cats computing .* 1/20 images  –/s  ETA –:––", _shown(err))
        clock.now = 132.0  # 4 more rows in 2 s after the first batch: 2 rows/s, 15 left
        display(progress.RowsDone("a", 2))
        display(progress.RowsDone("b", 2))
        display.bar.refresh()
        assert re.search(r"cats computing .* 5/20 images  2\.0/s  ETA 0:08", _shown(err))
        display(progress.Phase("validating"))
        display.bar.refresh()
        assert re.search(r"cats validating .* 5/20 images  2\.0/s", _shown(err))
