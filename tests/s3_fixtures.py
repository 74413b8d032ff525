"""A real SeaweedFS S3 server (auth on, loopback only) for the session, via infra/seaweedfs/run.sh.

The S3 secret key is a random canary: tests search logs, Prefect records and outputs for it.
"""

from __future__ import annotations

import json
import os
import random
import secrets
import socket
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

RUN_SH = Path(__file__).resolve().parents[1] / "infra" / "seaweedfs" / "run.sh"
BUCKET = "augflow-test"


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _free_base_port() -> int:
    # SeaweedFS uses P..P+6 and their gRPC ports P+10000..P+10006.
    for _ in range(200):
        base = random.randrange(20000, 29000)
        ports = [base + i for i in range(7)] + [base + 10000 + i for i in range(7)]
        if all(_port_free(p) for p in ports):
            return base
    raise RuntimeError("no free port range for SeaweedFS on 127.0.0.1")


@dataclass
class S3Server:
    port: int
    data_dir: Path
    identities: Path
    key: str
    secret: str
    bucket: str = BUCKET
    env: dict[str, str] = field(default_factory=dict)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _run(self, action: str) -> None:
        subprocess.run(
            ["bash", str(RUN_SH), action],
            env=self.env,
            check=True,
            timeout=120,
            stdout=subprocess.DEVNULL,
        )

    def start(self) -> None:
        self._run("start")

    def stop(self) -> None:
        self._run("stop")

    def aws_env(self, secret: str | None = None) -> dict[str, str]:
        return {
            "AWS_ACCESS_KEY_ID": self.key,
            "AWS_SECRET_ACCESS_KEY": secret if secret is not None else self.secret,
            "AUGFLOW_S3_ENDPOINT_URL": self.endpoint,
            "AWS_REGION": "us-east-1",
        }


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """One SeaweedFS for the session, with a TEST key whose secret is a canary."""
    base = tmp_path_factory.mktemp("seaweedfs")
    key = "augflow-test-key"
    secret = "CANARY" + secrets.token_hex(16)
    identities = base / "identities.json"
    identities.write_text(
        json.dumps(
            {
                "identities": [
                    {
                        "name": "augflow-test",
                        "credentials": [{"accessKey": key, "secretKey": secret}],
                        "actions": ["Admin", "Read", "Write", "List", "Tagging"],
                    }
                ]
            }
        )
    )
    port = _free_base_port()
    server = S3Server(port, base / "data", identities, key, secret)
    server.env = {
        **os.environ,
        "SEAWEEDFS_S3_PORT": str(port),
        "SEAWEEDFS_DIR": str(server.data_dir),
        "SEAWEEDFS_IDENTITIES": str(identities),
        "SEAWEEDFS_BUCKETS": BUCKET,
    }
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def s3_env(s3_server: S3Server, monkeypatch: pytest.MonkeyPatch) -> Iterator[S3Server]:
    """The AWS environment pointing at the session's server (and nothing from a block)."""
    from augflow.tasks import credentials

    monkeypatch.delenv(credentials.BLOCK_ENV, raising=False)
    for name, value in s3_server.aws_env().items():
        monkeypatch.setenv(name, value)
    credentials.clear_cache()
    yield s3_server
    credentials.clear_cache()


@pytest.fixture
def s3_root(s3_env: S3Server) -> str:
    """A fresh prefix in the test bucket."""
    return f"s3://{s3_env.bucket}/{uuid.uuid4().hex[:12]}"
