"""Every environment setting augflow reads, in one frozen object read once per process.

None of these can change an output byte: whatever could (batching, memory format, compilation,
tiling) is a request field and part of the request hash. Credentials are not settings: they come
from the standard AWS environment or a Prefect Secret block (:mod:`augflow.tasks.credentials`).

=================================  =========================================================  =======
variable                           meaning                                                    default
=================================  =========================================================  =======
``AUGFLOW_ROOT``                   output root of every command; ``--root`` and a request's    ``augflow-data``
                                   own ``output`` win over it
``AUGFLOW_LOG_DIR``                one log per ``augflow run``: Prefect, Ray and GX output     ``~/.augflow/logs``
``AUGFLOW_S3_ENDPOINT_URL``        S3 endpoint (else ``AWS_ENDPOINT_URL_S3``,                  AWS
                                   ``AWS_ENDPOINT_URL``)
``AUGFLOW_S3_CREDENTIALS_BLOCK``   Prefect block with S3 settings (``name``, ``secret/name``,  unset
                                   ``aws-credentials/name``)
``AUGFLOW_S3_FORWARD_CREDENTIALS`` send the driver's S3 settings to Ray actors               ``true``
``AUGFLOW_S3_RETRY_SECONDS``       total time transient storage errors are retried            ``60``
``AUGFLOW_S3_PART_SIZE_MB``        multipart part size; objects of 2 parts or more go up in   ``64``
                                   parts (min 5, S3's smallest part)
=================================  =========================================================  =======
"""

from __future__ import annotations

import functools
import os
from collections.abc import Mapping
from dataclasses import dataclass

from augflow.schemas.errors import RequestError

ENDPOINT_ENVS = ("AUGFLOW_S3_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL")
DEFAULT_ROOT = "augflow-data"
DEFAULT_LOG_DIR = "~/.augflow/logs"
_FALSE = ("0", "false", "no", "off")


@dataclass(frozen=True)
class Settings:
    """augflow's environment settings (see the module docstring for the table)."""

    root: str = DEFAULT_ROOT
    log_dir: str = DEFAULT_LOG_DIR
    s3_endpoint_url: str | None = None
    s3_credentials_block: str | None = None
    s3_forward_credentials: bool = True
    s3_retry_seconds: float = 60.0
    s3_part_size_mb: int = 64

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env
        retry = env.get("AUGFLOW_S3_RETRY_SECONDS", "").strip()
        try:
            retry_seconds = max(0.0, float(retry)) if retry else 60.0
        except ValueError:
            raise RequestError(
                "AUGFLOW_S3_RETRY_SECONDS", f"{retry!r} is not a number of seconds, e.g. 60"
            ) from None
        part = env.get("AUGFLOW_S3_PART_SIZE_MB", "").strip()
        try:
            part_mb = int(part) if part else 64
        except ValueError:
            raise RequestError(
                "AUGFLOW_S3_PART_SIZE_MB", f"{part!r} is not a whole number of MiB, e.g. 64"
            ) from None
        if part_mb < 5:
            raise RequestError(
                "AUGFLOW_S3_PART_SIZE_MB", f"{part_mb} is below S3's smallest part size of 5 MiB"
            )
        return cls(
            root=env.get("AUGFLOW_ROOT", "").strip() or DEFAULT_ROOT,
            log_dir=env.get("AUGFLOW_LOG_DIR", "").strip() or DEFAULT_LOG_DIR,
            s3_endpoint_url=next((env[e] for e in ENDPOINT_ENVS if env.get(e)), None),
            s3_credentials_block=env.get("AUGFLOW_S3_CREDENTIALS_BLOCK", "").strip() or None,
            s3_forward_credentials=env.get("AUGFLOW_S3_FORWARD_CREDENTIALS", "true").strip().lower()
            not in _FALSE,
            s3_retry_seconds=retry_seconds,
            s3_part_size_mb=part_mb,
        )


@functools.cache
def settings() -> Settings:
    """This process's settings, read from the environment on first use."""
    return Settings.from_env()


def reload_settings() -> Settings:
    """Read the environment again (after a test or a long-lived worker changed it)."""
    settings.cache_clear()
    return settings()
