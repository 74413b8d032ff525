"""The local Prefect server of an ``augflow run`` with no ``PREFECT_API_URL``, started without
importing Prefect's server code into the run's process.

Left to itself, Prefect starts a temporary server process the first time a client needs one
(``SubprocessASGIServer``). To build that process's command line, the *calling* process imports
``prefect.server.api.server``: FastAPI, SQLAlchemy and every API router, about 2 s of CPU, which
the server process then imports again. On a 2-core machine that CPU comes out of the actor's
start-up. This module starts the same server (the same uvicorn command and settings, so the same
database under ``PREFECT_HOME``) and points this process at it through ``PREFECT_API_URL``, set
before Prefect is imported here.

The server is this process's: it is stopped at exit (SIGTERM, as Prefect stops its own), and the
kernel sends it SIGTERM if this process dies without exiting (SIGKILL, a crash): the parent-death
signal, which Prefect's own temporary server does not set, so a killed run leaves no server behind.
"""

from __future__ import annotations

import atexit
import http.client
import importlib.util
import os
import socket
import subprocess
import sys
import threading
import time
import tomllib
from pathlib import Path
from typing import Any

from augflow.schemas.errors import OrchestrationError

#: Environment of the server process: Prefect's for its temporary server (no UI, no services).
SERVER_ENV = {
    "PREFECT_UI_ENABLED": "0",
    "PREFECT__SERVER_EPHEMERAL": "1",
    "PREFECT__SERVER_FINAL": "1",
}
#: Prefect's own start-up timeout setting, honoured here; the CLI sets 120 s when unset.
TIMEOUT_SETTING = "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"

# Runs in the child before uvicorn: ask the kernel for SIGTERM when the thread that started it
# ends (PR_SET_PDEATHSIG survives exec), and give up if that already happened. Linux only;
# elsewhere the server is stopped at exit as Prefect's is.
_DIE_WITH_PARENT = """
import ctypes, os, signal, sys
try:
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)
except (AttributeError, OSError):
    pass
if os.getppid() != int(sys.argv[1]):
    sys.exit(0)
os.execv(sys.executable, [sys.executable, "-m", "uvicorn", *sys.argv[2:]])
"""


class LocalPrefectServer:
    """A Prefect API server process on 127.0.0.1 that lives as long as this process."""

    def __init__(self) -> None:
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None
        self._spawn()
        atexit.register(self.stop)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/api"

    def _spawn(self) -> None:
        # The socket is bound here and handed to uvicorn (--fd): no other process can take the
        # port between its choice and the server's start, and the URL is known at once.
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.bind(("127.0.0.1", 0))
            self.port = int(sock.getsockname()[1])
            app_dir = str(_package_dir("prefect").parent)
            cmd = [sys.executable, "-c", _DIE_WITH_PARENT, str(os.getpid())]
            cmd += ["--app-dir", app_dir, "--factory", "prefect.server.api.server:create_app"]
            cmd += ["--fd", str(sock.fileno()), "--log-level", "error", "--lifespan", "on"]
            # output to this process's stdout/stderr, as Prefect's own server: during
            # `augflow run` they are the run's log file (flows/quiet.py), or the terminal
            self.process = subprocess.Popen(
                cmd,
                env={**os.environ, **SERVER_ENV},
                stdin=subprocess.DEVNULL,
                pass_fds=(sock.fileno(),),
            )
        finally:
            sock.close()  # the server holds its own copy

    def wait_ready(self, timeout_s: float | None = None) -> None:
        """Return once the server answers its health check; OrchestrationError if it exits or
        does not answer within ``timeout_s`` (default: Prefect's start-up timeout setting)."""
        if timeout_s is None:
            timeout_s = float(os.environ.get(TIMEOUT_SETTING) or 20)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process is None:  # stopped meanwhile (exit)
                raise OrchestrationError("the local Prefect server was stopped while starting")
            code = self.process.poll()
            if code is not None:
                raise OrchestrationError(
                    f"the local Prefect server exited with code {code} while starting (its "
                    "output is in this run's log). Check PREFECT_HOME and its database, or set "
                    "PREFECT_API_URL to a running Prefect server."
                )
            if _healthy(self.port):
                return
            time.sleep(0.05)
        self.stop()
        raise OrchestrationError(
            f"the local Prefect server did not answer within {timeout_s:.0f} s "
            f"({TIMEOUT_SETTING}; its output is in this run's log). On a busy machine raise "
            f"{TIMEOUT_SETTING}, or set PREFECT_API_URL to a running Prefect server."
        )

    def terminate(self) -> None:
        """Ask the server to stop (SIGTERM) without waiting; :meth:`stop` waits."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()

    def stop(self) -> None:
        """Stop the server: SIGTERM, then SIGKILL after 5 s (as Prefect stops its own)."""
        proc, self.process = self.process, None
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def start() -> LocalPrefectServer | None:
    """Start the run's server and point this process at it; None (Prefect decides) when a
    ``PREFECT_API_URL`` is set (in the environment or anywhere else Prefect reads settings
    from: :func:`api_url_configured_elsewhere`), or when Prefect is already imported here (its
    settings were read, so the URL set now would not reach it), or when called off the main
    thread (the kernel ties the parent-death signal to the thread that started the process)."""
    if os.environ.get("PREFECT_API_URL") or api_url_configured_elsewhere():
        return None
    if "prefect" in sys.modules or threading.current_thread() is not threading.main_thread():
        return None
    if importlib.util.find_spec("uvicorn") is None:
        return None
    server = LocalPrefectServer()
    os.environ["PREFECT_API_URL"] = server.url
    return server


def api_url_configured_elsewhere(cwd: Path | None = None) -> bool:
    """Whether Prefect could find an API URL outside the environment: in the active profile
    (``profiles.toml``), in ``.env``, ``prefect.toml`` or ``pyproject.toml`` of the working
    folder. Read without importing Prefect; anything unreadable counts as configured, so a
    server the user set up is never bypassed."""
    cwd = Path.cwd() if cwd is None else cwd
    try:
        env_file = cwd / ".env"
        if env_file.is_file() and "PREFECT_" in env_file.read_text(errors="replace"):
            return True
        prefect_toml = _toml(cwd / "prefect.toml")
        if prefect_toml.get("profiles_path") or (prefect_toml.get("api") or {}).get("url"):
            return True
        tool = (_toml(cwd / "pyproject.toml").get("tool") or {}).get("prefect") or {}
        if tool.get("profiles_path") or (tool.get("api") or {}).get("url"):
            return True
        return bool(_active_profile().get("PREFECT_API_URL"))
    except (OSError, ValueError, AttributeError):
        return True


def _toml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    with path.open("rb") as fh:
        return tomllib.load(fh)


def _active_profile() -> dict[str, Any]:
    """The settings of Prefect's active profile, found as Prefect finds it."""
    builtin = _package_dir("prefect") / "settings" / "profiles.toml"
    if os.environ.get("PREFECT_PROFILES_PATH"):
        path = Path(os.environ["PREFECT_PROFILES_PATH"])
    elif os.environ.get("PREFECT_HOME"):
        path = Path(os.environ["PREFECT_HOME"]).expanduser() / "profiles.toml"
    else:
        path = Path("~/.prefect/profiles.toml").expanduser()
    data = _toml(path) if path.is_file() else {}
    active = os.environ.get("PREFECT_PROFILE") or data.get("active")
    profiles = data.get("profiles") or {}
    if active and active in profiles:
        return dict(profiles[active])
    defaults = _toml(builtin)
    name = active if not data and active else defaults.get("active", "ephemeral")
    return dict((defaults.get("profiles") or {}).get(name) or {})


def _package_dir(package: str) -> Path:
    # find_spec of a top-level package locates it without importing it
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise OrchestrationError(f"{package} is not installed; reinstall augflow")
    return Path(next(iter(spec.submodule_search_locations)))


def _healthy(port: int) -> bool:
    # http.client, not urllib: a proxy from the environment must never see a loopback call
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
    try:
        conn.request("GET", "/api/health")
        return conn.getresponse().status == 200
    except OSError:
        return False
    finally:
        conn.close()
