"""Where S3 settings come from (installed > Prefect block > environment > botocore's chain) and
that secrets never show in a repr or an error."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
from pydantic import SecretStr

from augflow.schemas.errors import StorageError
from augflow.tasks import credentials
from augflow.tasks.credentials import S3Settings

AWS_VARS = (
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_REGION",
    "AWS_DEFAULT_REGION",
    "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT_URL_S3",
    "AUGFLOW_S3_ENDPOINT_URL",
    credentials.BLOCK_ENV,
    credentials.FORWARD_ENV,
)


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[pytest.MonkeyPatch]:
    for var in AWS_VARS:
        monkeypatch.delenv(var, raising=False)
    credentials.clear_cache()
    yield monkeypatch
    monkeypatch.undo()
    credentials.clear_cache()


def test_nothing_set_means_botocores_default_chain_and_nothing_forwarded() -> None:
    s = credentials.s3_settings()
    assert "default chain" in s.source
    assert (s.key, s.secret, s.endpoint_url, s.region) == (None, None, None, None)
    assert not s.explicit
    assert credentials.forwarded_settings() is None  # workers resolve their own identity


def test_environment_settings_hide_their_secrets(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("AWS_ACCESS_KEY_ID", "AKID")
    clean_env.setenv("AWS_SECRET_ACCESS_KEY", "CANARY-secret")
    clean_env.setenv("AWS_SESSION_TOKEN", "CANARY-token")
    clean_env.setenv("AWS_DEFAULT_REGION", "eu-north-1")
    credentials.clear_cache()
    s = credentials.s3_settings()
    assert "AWS_ACCESS_KEY_ID" in s.source
    assert (s.key, s.region) == ("AKID", "eu-north-1")
    assert s.secrets() == ["CANARY-secret", "CANARY-token"]
    assert "CANARY" not in repr(s) and "CANARY" not in str(s)
    assert credentials.forwarded_settings() == s


def test_an_endpoint_alone_is_explicit_and_is_forwarded(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("AWS_ENDPOINT_URL_S3", "http://127.0.0.1:9")
    credentials.clear_cache()
    assert credentials.forwarded_settings() == credentials.s3_settings()
    assert credentials.s3_settings().endpoint_url == "http://127.0.0.1:9"


def test_installed_settings_win_until_cleared(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("AWS_ACCESS_KEY_ID", "from-env")
    credentials.clear_cache()
    driver = S3Settings(source="driver", key="from-driver", secret=SecretStr("s"))
    credentials.install_s3_settings(driver)
    assert credentials.s3_settings() is driver
    credentials.clear_cache()
    assert credentials.s3_settings().key == "from-env"


def test_forwarding_can_be_switched_off(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("AWS_ACCESS_KEY_ID", "id")
    clean_env.setenv(credentials.FORWARD_ENV, "false")
    credentials.clear_cache()
    assert credentials.s3_settings().key == "id"
    assert credentials.forwarded_settings() is None


@pytest.mark.slow
@pytest.mark.usefixtures("prefect_server")
def test_a_secret_block_is_read_once_and_wins_over_the_environment(
    clean_env: pytest.MonkeyPatch,
) -> None:
    import json

    from prefect.blocks.system import Secret

    name = f"augflow-test-{uuid.uuid4().hex[:8]}"
    # A JSON string works as well as an object (that is how the Prefect UI stores it).
    Secret(
        value=json.dumps(
            {
                "aws_access_key_id": "block-id",
                "aws_secret_access_key": "CANARY-block",
                "endpoint_url": "http://127.0.0.1:7",
                "region_name": "ap-south-1",
            }
        )
    ).save(name)
    clean_env.setenv("AWS_ACCESS_KEY_ID", "env-id")
    clean_env.setenv(credentials.BLOCK_ENV, name)
    credentials.clear_cache()
    s = credentials.s3_settings()
    assert f"secret/{name}" in s.source
    assert (s.key, s.endpoint_url, s.region) == ("block-id", "http://127.0.0.1:7", "ap-south-1")
    assert s.secrets() == ["CANARY-block"] and "CANARY" not in repr(s)
    # Loaded once: a rotated block is seen after clear_cache(), not before.
    Secret(value={"aws_access_key_id": "rotated", "aws_secret_access_key": "x"}).save(
        name, overwrite=True
    )
    assert credentials.s3_settings().key == "block-id"
    credentials.clear_cache()
    rotated = credentials.s3_settings()
    assert rotated.key == "rotated" and rotated.endpoint_url is None


@pytest.mark.slow
@pytest.mark.usefixtures("prefect_server")
def test_unusable_blocks_fail_clearly(clean_env: pytest.MonkeyPatch) -> None:
    from prefect.blocks.system import Secret

    missing = f"augflow-missing-{uuid.uuid4().hex[:8]}"
    clean_env.setenv(credentials.BLOCK_ENV, missing)
    credentials.clear_cache()
    with pytest.raises(StorageError) as err:
        credentials.s3_settings()
    assert f"secret/{missing}" in str(err.value) and credentials.BLOCK_ENV in str(err.value)

    not_json = f"augflow-text-{uuid.uuid4().hex[:8]}"
    Secret(value="CANARY-plain-text").save(not_json)
    clean_env.setenv(credentials.BLOCK_ENV, not_json)
    credentials.clear_cache()
    with pytest.raises(StorageError, match="must hold a JSON object") as err:
        credentials.s3_settings()
    assert "CANARY" not in str(err.value)
