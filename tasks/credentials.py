"""S3 connection settings: where they come from, and how they reach Ray actors without leaking.

Sources, first match wins (never request fields, never flow parameters):

1. settings installed in this process by :func:`install_s3_settings` — how a Ray actor receives the
   driver's settings (see :mod:`augflow.tasks.execute`);
2. the Prefect block named by ``AUGFLOW_S3_CREDENTIALS_BLOCK``: a ``Secret`` block holding JSON
   ``{"aws_access_key_id", "aws_secret_access_key", "endpoint_url", "region_name"}`` (``name`` or
   ``secret/name``), or an ``AwsCredentials`` block (``aws-credentials/name``, needs prefect-aws);
3. the standard AWS environment: ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``,
   ``AWS_SESSION_TOKEN``, ``AWS_REGION``/``AWS_DEFAULT_REGION``; endpoint from
   ``AUGFLOW_S3_ENDPOINT_URL``, ``AWS_ENDPOINT_URL_S3`` or ``AWS_ENDPOINT_URL``;
4. nothing explicit: botocore's default chain (``AWS_PROFILE``, ``~/.aws``, instance role).

Secrets are held as :class:`pydantic.SecretStr`, so a repr, log line or error never shows them.
"""

from __future__ import annotations

import json
import os
import threading
from dataclasses import dataclass
from typing import Any

from pydantic import SecretStr

from augflow.schemas.errors import StorageError
from augflow.schemas.settings import reload_settings
from augflow.schemas.settings import settings as env_settings

BLOCK_ENV = "AUGFLOW_S3_CREDENTIALS_BLOCK"
FORWARD_ENV = "AUGFLOW_S3_FORWARD_CREDENTIALS"
CHECK_HINT = (
    "check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (and AWS_SESSION_TOKEN), the endpoint in "
    "AUGFLOW_S3_ENDPOINT_URL / AWS_ENDPOINT_URL, or the Prefect block named by "
    f"{BLOCK_ENV}"
)


@dataclass(frozen=True)
class S3Settings:
    """Everything needed to talk to one S3 service. ``source`` says where it came from."""

    source: str
    endpoint_url: str | None = None
    region: str | None = None
    key: str | None = None
    secret: SecretStr | None = None
    token: SecretStr | None = None

    def secrets(self) -> list[str]:
        """The secret values, so error text can be scrubbed of them."""
        return [s.get_secret_value() for s in (self.secret, self.token) if s is not None]

    @property
    def explicit(self) -> bool:
        return any((self.endpoint_url, self.region, self.key, self.secret))


_installed: S3Settings | None = None
_block_cache: dict[str, S3Settings] = {}
_lock = threading.Lock()


def install_s3_settings(settings: S3Settings | None) -> None:
    """Make ``settings`` this process's S3 settings (a Ray actor calls this with the driver's)."""
    global _installed
    _installed = settings


def clear_cache() -> None:
    """Forget loaded blocks, installed settings and the environment settings read so far (a block
    was rotated, the environment changed, or in tests)."""
    install_s3_settings(None)
    reload_settings()
    with _lock:
        _block_cache.clear()


def s3_settings() -> S3Settings:
    """This process's S3 settings (see the module docstring for the order of sources)."""
    if _installed is not None:
        return _installed
    block = env_settings().s3_credentials_block
    if block:
        with _lock:
            if block not in _block_cache:
                _block_cache[block] = _from_block(block)
            return _block_cache[block]
    return _from_env()


def forwarded_settings() -> S3Settings | None:
    """The settings a Ray actor should install, or None to let it resolve its own.

    Set ``AUGFLOW_S3_FORWARD_CREDENTIALS=false`` on a remote cluster whose workers have their own
    identity (IRSA, instance role, a Kubernetes secret in their env): nothing is then sent.
    """
    if not env_settings().s3_forward_credentials:
        return None
    settings = s3_settings()
    return settings if settings.explicit else None


def _from_env() -> S3Settings:
    key = os.environ.get("AWS_ACCESS_KEY_ID") or None
    secret = os.environ.get("AWS_SECRET_ACCESS_KEY") or None
    token = os.environ.get("AWS_SESSION_TOKEN") or None
    return S3Settings(
        source="the environment (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY)"
        if key
        else "botocore's default chain (AWS_PROFILE, ~/.aws, instance role)",
        endpoint_url=env_settings().s3_endpoint_url,
        region=os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or None,
        key=key,
        secret=SecretStr(secret) if secret else None,
        token=SecretStr(token) if token else None,
    )


def _from_block(name: str) -> S3Settings:
    from prefect.blocks.core import Block

    slug = name if "/" in name else f"secret/{name}"
    source = f"the Prefect block {slug!r} ({BLOCK_ENV})"
    try:
        block = Block.load(slug)
    except Exception as exc:
        # Prefect's message names the block, never its value.
        raise StorageError(
            f"cannot load {source}: {type(exc).__name__}: {exc}; create it (e.g. "
            f"`Secret(value={{...}}).save({slug.split('/', 1)[1]!r})`) or unset {BLOCK_ENV}"
        ) from None
    values = _block_values(block, source)
    secret = values.get("aws_secret_access_key")
    token = values.get("aws_session_token")
    return S3Settings(
        source=source,
        endpoint_url=values.get("endpoint_url") or env_settings().s3_endpoint_url,
        region=values.get("region_name") or os.environ.get("AWS_REGION") or None,
        key=values.get("aws_access_key_id") or None,
        secret=SecretStr(str(secret)) if secret else None,
        token=SecretStr(str(token)) if token else None,
    )


def _block_values(block: Any, source: str) -> dict[str, Any]:
    if hasattr(block, "aws_secret_access_key"):  # prefect-aws AwsCredentials
        client = getattr(block, "aws_client_parameters", None)
        secret = block.aws_secret_access_key
        return {
            "aws_access_key_id": block.aws_access_key_id,
            "aws_secret_access_key": secret.get_secret_value() if secret else None,
            "aws_session_token": getattr(block, "aws_session_token", None),
            "region_name": getattr(block, "region_name", None),
            "endpoint_url": getattr(client, "endpoint_url", None),
        }
    raw = block.get() if hasattr(block, "get") else None
    if isinstance(raw, str):
        try:
            raw = json.loads(raw)
        except ValueError:
            raw = None
    if not isinstance(raw, dict):
        raise StorageError(
            f"{source} must hold a JSON object with aws_access_key_id, aws_secret_access_key and "
            "optionally endpoint_url and region_name"
        )
    return raw
