"""Dataset names, versions and ``name@version`` references: one rule, used wherever a name or a
version becomes part of a storage key.

Names and versions are matched in full (``re.fullmatch``): a pattern anchored with ``$`` also
matches before a trailing newline, which would let ``"cats\\n"`` become a folder name.
"""

from __future__ import annotations

import re

from augflow.schemas.errors import DatasetRefError

LATEST = "latest"
_NAME = re.compile(r"[a-z0-9][a-z0-9._-]{0,127}")
_VERSION = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,127}")
NAME_RULE = "lowercase letters, digits, '.', '_' and '-', starting with a letter or digit"
VERSION_RULE = "letters, digits, '.', '_' and '-', not starting with '.'"


def is_dataset_name(value: object) -> bool:
    return isinstance(value, str) and _NAME.fullmatch(value) is not None


def check_dataset_name(value: str, where: str = "dataset name") -> str:
    """``value`` if it is a valid dataset name, else :class:`DatasetRefError` saying the rule."""
    if not is_dataset_name(value):
        raise DatasetRefError(
            f"{value!r} is not a valid {where}: use {NAME_RULE} (e.g. 'cats-variants')"
        )
    return value


def is_version(value: object) -> bool:
    return isinstance(value, str) and _VERSION.fullmatch(value) is not None


def check_version(value: str, where: str = "version") -> str:
    """``value`` if it is a valid version id (``latest`` is reserved), else :class:`DatasetRefError`."""
    if not is_version(value) or value == LATEST:
        raise DatasetRefError(
            f"{value!r} is not a valid {where}: use {VERSION_RULE} ({LATEST!r} is reserved)"
        )
    return value


def parse_ref(ref: str) -> tuple[str, str]:
    """``"name@version"`` → ``(name, version)``; a bare ``"name"`` means ``(name, "latest")``."""
    text = ref.strip()
    name, sep, version = text.partition("@")
    if not name:
        raise DatasetRefError(f"{ref!r} has no dataset name before '@' (expected name@version)")
    check_dataset_name(name, f"dataset name in {ref!r}")
    if not sep:
        return name, LATEST
    if not version:
        raise DatasetRefError(f"{ref!r} has nothing after '@'; give a version or '{LATEST}'")
    if version != LATEST and not is_version(version):
        raise DatasetRefError(f"{version!r} in {ref!r} is not a version: use {VERSION_RULE}")
    return name, version


def looks_like_ref(value: str) -> bool:
    """Whether an ``inputs`` value names a registered version (``name@version``) rather than a URI."""
    if "://" in value or "/" in value or "@" not in value:
        return False
    try:
        parse_ref(value)
    except DatasetRefError:
        return False
    return True
