"""The one rule for dataset names, versions and ``name@version`` references."""

from __future__ import annotations

import pytest

from augflow.schemas.errors import DatasetRefError
from augflow.schemas.names import (
    LATEST,
    check_dataset_name,
    check_version,
    is_dataset_name,
    is_version,
    looks_like_ref,
    parse_ref,
)


@pytest.mark.parametrize("name", ["cats", "cats-variants", "a", "0day", "x.y_z-1", "a" * 128])
def test_valid_names(name: str) -> None:
    assert is_dataset_name(name) and check_dataset_name(name) == name


@pytest.mark.parametrize(
    "name",
    ["", "Cats", "-cats", ".cats", "_cats", "cats/../x", "ca ts", "cats\n", "a" * 129, "cats@v1"],
)
def test_invalid_names_are_refused_with_the_rule(name: str) -> None:
    assert not is_dataset_name(name)
    with pytest.raises(DatasetRefError, match="lowercase letters, digits"):
        check_dataset_name(name, "dataset")


def test_non_strings_are_not_names_or_versions() -> None:
    assert not is_dataset_name(None) and not is_dataset_name(3)
    assert not is_version(None) and not is_version(1.0)


@pytest.mark.parametrize("version", ["v1", "2026-01-01", "abc123DEF", "_x", "1.2.3"])
def test_valid_versions(version: str) -> None:
    assert check_version(version) == version


@pytest.mark.parametrize("version", [".hidden", "..", "a/b", "v1\n", "", "x" * 129, LATEST])
def test_invalid_versions_and_latest_are_refused(version: str) -> None:
    with pytest.raises(DatasetRefError, match="not a valid version"):
        check_version(version)


def test_parse_ref() -> None:
    assert parse_ref("cats@v1") == ("cats", "v1")
    assert parse_ref("  cats@latest ") == ("cats", LATEST)
    assert parse_ref("cats") == ("cats", LATEST)


@pytest.mark.parametrize(
    ("ref", "words"),
    [
        ("@v1", "no dataset name"),
        ("cats@", "nothing after '@'"),
        ("Cats@v1", "not a valid dataset name"),
        ("cats@../x", "is not a version"),
    ],
)
def test_malformed_refs_say_what_is_wrong(ref: str, words: str) -> None:
    with pytest.raises(DatasetRefError, match=words):
        parse_ref(ref)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("cats@v1", True),
        ("cats@latest", True),
        ("cats", False),  # a bare name is a relative folder, not a reference
        ("s3://bucket/cats@v1", False),
        ("photos/cats@v1", False),
        ("Cats@v1", False),
        ("cats@", False),
    ],
)
def test_looks_like_ref(value: str, expected: bool) -> None:
    assert looks_like_ref(value) is expected
