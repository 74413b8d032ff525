"""Environment settings: read once into a frozen object, with documented defaults."""

from __future__ import annotations

import dataclasses

import pytest

from augflow.schemas import settings as settings_module
from augflow.schemas.errors import RequestError
from augflow.schemas.settings import DEFAULT_ROOT, Settings, reload_settings, settings


def test_defaults_with_an_empty_environment() -> None:
    assert Settings.from_env({}) == Settings(
        root=DEFAULT_ROOT,
        s3_endpoint_url=None,
        s3_credentials_block=None,
        s3_forward_credentials=True,
        s3_retry_seconds=60.0,
    )
    # Blank values mean unset.
    assert (
        Settings.from_env({"AUGFLOW_ROOT": "  ", "AUGFLOW_S3_CREDENTIALS_BLOCK": " "}) == Settings()
    )


def test_values_are_read() -> None:
    s = Settings.from_env(
        {
            "AUGFLOW_ROOT": " s3://bucket/aug ",
            "AUGFLOW_S3_CREDENTIALS_BLOCK": "secret/s3",
            "AUGFLOW_S3_FORWARD_CREDENTIALS": "Off",
            "AUGFLOW_S3_RETRY_SECONDS": "2.5",
        }
    )
    assert s.root == "s3://bucket/aug"
    assert s.s3_credentials_block == "secret/s3"
    assert s.s3_forward_credentials is False
    assert s.s3_retry_seconds == 2.5


@pytest.mark.parametrize(
    ("value", "forward"),
    [("0", False), ("no", False), ("FALSE", False), ("1", True), ("yes", True)],
)
def test_forward_credentials_flag(value: str, forward: bool) -> None:
    assert (
        Settings.from_env({"AUGFLOW_S3_FORWARD_CREDENTIALS": value}).s3_forward_credentials
        is forward
    )


def test_endpoint_precedence() -> None:
    env = {
        "AWS_ENDPOINT_URL": "http://generic:1",
        "AWS_ENDPOINT_URL_S3": "http://s3-specific:2",
        "AUGFLOW_S3_ENDPOINT_URL": "http://augflow:3",
    }
    assert Settings.from_env(env).s3_endpoint_url == "http://augflow:3"
    del env["AUGFLOW_S3_ENDPOINT_URL"]
    assert Settings.from_env(env).s3_endpoint_url == "http://s3-specific:2"
    del env["AWS_ENDPOINT_URL_S3"]
    assert Settings.from_env(env).s3_endpoint_url == "http://generic:1"


def test_retry_seconds_are_clamped_and_a_bad_value_names_the_variable() -> None:
    assert Settings.from_env({"AUGFLOW_S3_RETRY_SECONDS": "-5"}).s3_retry_seconds == 0.0
    with pytest.raises(RequestError, match=r"AUGFLOW_S3_RETRY_SECONDS.*'soon' is not a number"):
        Settings.from_env({"AUGFLOW_S3_RETRY_SECONDS": "soon"})


def test_settings_are_frozen() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        Settings().root = "x"


def test_read_once_until_reloaded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AUGFLOW_ROOT", "/first")
    try:
        assert reload_settings().root == "/first"
        monkeypatch.setenv("AUGFLOW_ROOT", "/second")
        assert settings().root == "/first"  # cached: the environment is read once
        assert settings() is settings()
        assert reload_settings().root == "/second"
        assert settings_module.settings().root == "/second"
    finally:
        monkeypatch.undo()
        reload_settings()


def test_the_docstring_table_lists_every_setting() -> None:
    doc = settings_module.__doc__ or ""
    for field in dataclasses.fields(Settings):
        assert f"``AUGFLOW_{field.name.upper()}``" in doc, field.name
