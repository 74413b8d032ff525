"""The local Prefect server of an ``augflow run`` with no PREFECT_API_URL (flows/local_prefect.py):
a real Prefect server process on 127.0.0.1, started without Prefect's server code in the run's
process, that ends with the run however the run ends."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from augflow.flows import local_prefect
from augflow.schemas.errors import OrchestrationError

pytestmark = pytest.mark.slow


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    env["PREFECT_HOME"] = str(tmp_path / "prefect-home")  # a database of its own
    env["PREFECT_LOGGING_LEVEL"] = "WARNING"
    return {**env, **extra}


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie is dead for our purpose: only its parent's wait is missing
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _gone_within(pid: int, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if not _alive(pid):
            return True
        time.sleep(0.1)
    return False


_RUN = """
import json, os, sys
from augflow.flows.cli import app
try:
    app(["run", sys.argv[1], "--output", sys.argv[2]], standalone_mode=False)
    code = 0
except SystemExit as exc:
    code = int(exc.code or 0)
# a file, not stdout: `augflow run` keeps the terminal's streams for itself while it runs
with open(sys.argv[3], "w") as fh:
    json.dump({
        "code": code,
        "server_code_imported": "prefect.server.api.server" in sys.modules,
        "api_url": os.environ.get("PREFECT_API_URL"),
    }, fh)
"""


def test_a_run_without_an_api_url_uses_its_own_server_and_leaves_nothing_running(
    tiny_model: Path, tmp_path: Path
) -> None:
    req = tmp_path / "req.json"
    req.write_text(
        json.dumps(
            {
                "dataset": "local-server",
                "operation": {"kind": "generate", "num_images": 2},
                "model": {"id": str(tiny_model)},
                "steps": 2,
            }
        )
    )
    out = tmp_path / "out"
    report_file = tmp_path / "report.json"
    proc = subprocess.run(
        [sys.executable, "-c", _RUN, str(req), str(out), str(report_file)],
        capture_output=True,
        text=True,
        timeout=600,
        env=_env(tmp_path),
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(report_file.read_text())
    assert report["code"] == 0, proc.stderr[-3000:]
    # the run reached its Prefect API on loopback without importing Prefect's server code
    assert report["server_code_imported"] is False
    url = report["api_url"]
    assert url.startswith("http://127.0.0.1:") and url.endswith("/api")
    assert list((out / "registry" / "local-server" / "versions").glob("*.json"))
    # and the server is gone with the run: its port no longer answers
    port = int(url.rsplit(":", 1)[1].split("/")[0])
    with socket.socket() as s, pytest.raises(OSError):
        s.settimeout(2)
        s.connect(("127.0.0.1", port))


_KILLED = """
import sys, time
from augflow.flows import local_prefect
server = local_prefect.start()
server.wait_ready(120)
print(server.process.pid, server.port, flush=True)
time.sleep(600)
"""


def test_the_server_ends_when_its_run_is_killed(tmp_path: Path) -> None:
    child = subprocess.Popen(
        [sys.executable, "-c", _KILLED],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_env(tmp_path),
    )
    try:
        assert child.stdout is not None
        line = child.stdout.readline()
        assert line, child.stderr.read()[-3000:] if child.stderr else ""
        pid, port = (int(x) for x in line.split())
        assert local_prefect._healthy(port) and _alive(pid)
        child.kill()  # no exit handler runs: only the kernel can end the server now
        child.wait(timeout=30)
        assert _gone_within(pid, 15), f"server {pid} outlived its killed run"
    finally:
        if child.poll() is None:
            child.kill()


def test_start_leaves_an_api_url_or_an_imported_prefect_alone(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("PREFECT_API_URL", "http://127.0.0.1:1/api")
    assert local_prefect.start() is None
    monkeypatch.delenv("PREFECT_API_URL")
    import prefect  # noqa: F401  # this process read Prefect's settings already

    assert local_prefect.start() is None
    assert "PREFECT_API_URL" not in os.environ


def _server(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, **env: str):
    for key, value in _env(tmp_path, **env).items():
        monkeypatch.setenv(key, value)
    return local_prefect.LocalPrefectServer()


def test_a_server_that_cannot_start_is_reported(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "not-a-folder").write_text("")
    bad_db = f"sqlite+aiosqlite:///{tmp_path / 'not-a-folder' / 'prefect.db'}"
    server = _server(monkeypatch, tmp_path, PREFECT_API_DATABASE_CONNECTION_URL=bad_db)
    try:
        with pytest.raises(OrchestrationError) as err:
            server.wait_ready(120)
    finally:
        server.stop()
    message = str(err.value)
    assert "the local Prefect server exited" in message and "run's log" in message
    assert "PREFECT_API_URL" in message  # what to do
    # its output went where this process's goes (the run's log in `augflow run`), not lost
    assert "unable to open database" in capfd.readouterr().err.lower()


def test_a_server_that_does_not_answer_in_time_is_stopped_and_named(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    server = _server(monkeypatch, tmp_path)
    pid = server.process.pid
    with pytest.raises(OrchestrationError, match="did not answer within") as err:
        server.wait_ready(0.01)
    assert local_prefect.TIMEOUT_SETTING in str(err.value)
    assert _gone_within(pid, 10)


def test_the_port_is_the_servers_from_the_start_and_stop_ends_it(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    server = _server(monkeypatch, tmp_path)
    try:
        # bound before the server process started: nobody can take it while the server imports
        with socket.socket() as other, pytest.raises(OSError):
            other.bind(("127.0.0.1", server.port))
        server.wait_ready(120)
        assert local_prefect._healthy(server.port)
        proc = server.process
    finally:
        server.stop()
    assert server.process is None
    assert proc.returncode in (0, -signal.SIGTERM)  # stopped as Prefect stops its own
    assert not local_prefect._healthy(server.port)


def test_an_api_url_set_where_prefect_reads_settings_is_never_bypassed(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """`prefect config set PREFECT_API_URL=...` (the active profile), `.env`, `prefect.toml` and
    `pyproject.toml` set an API URL as well as the environment does: the run then uses it, not a
    server of its own."""
    home, work = tmp_path / "home", tmp_path / "work"
    home.mkdir()
    work.mkdir()
    monkeypatch.chdir(work)
    monkeypatch.setenv("PREFECT_HOME", str(home))
    for name in ("PREFECT_API_URL", "PREFECT_PROFILE", "PREFECT_PROFILES_PATH"):
        monkeypatch.delenv(name, raising=False)
    configured = local_prefect.api_url_configured_elsewhere
    assert configured() is False  # nothing anywhere: the run may start its own

    url = 'PREFECT_API_URL = "http://127.0.0.1:4200/api"'
    profiles = home / "profiles.toml"
    profiles.write_text(f'active = "team"\n[profiles.team]\n{url}\n[profiles.other]\n')
    assert configured() is True
    monkeypatch.setenv("PREFECT_PROFILE", "other")  # a profile without one
    assert configured() is False
    profiles.unlink()
    monkeypatch.setenv("PREFECT_PROFILE", "local")  # Prefect's own profile with a URL
    monkeypatch.delenv("PREFECT_HOME")
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.prefect/profiles.toml either
    assert configured() is True
    monkeypatch.delenv("PREFECT_PROFILE")
    assert configured() is False

    for name, text in [
        (".env", "PREFECT_API_URL=http://127.0.0.1:4200/api\n"),
        ("prefect.toml", '[api]\nurl = "http://127.0.0.1:4200/api"\n'),
        ("pyproject.toml", '[tool.prefect.api]\nurl = "http://127.0.0.1:4200/api"\n'),
        ("prefect.toml", "not = [valid toml"),  # unreadable: assume it says something
    ]:
        (work / name).write_text(text)
        assert configured() is True, name
        assert local_prefect.start() is None
        (work / name).unlink()
    (work / "pyproject.toml").write_text('[project]\nname = "x"\n')  # an ordinary project
    assert configured() is False
