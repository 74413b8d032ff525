"""The family seam (families/base.py): every built-in family has the Protocol's members."""

from __future__ import annotations

import inspect

from augflow.models.families import base
from augflow.models.runner import registered_families


def _protocol_members() -> set[str]:
    own = set(vars(base.Family)) | set(base.Family.__annotations__)
    return {m for m in own if not m.startswith("_")} | {"__init__"}


def test_every_builtin_family_has_the_protocols_members() -> None:
    members = _protocol_members()
    assert {"name", "summary", "pipe", "steps", "matches", "check", "expected_size"} <= members
    names = []
    for cls in registered_families():
        names.append(cls.name)
        assert isinstance(cls.summary, str) and cls.summary
        for m in ("matches", "check", "expected_size", "compute"):
            assert callable(getattr(cls, m)), (cls, m)
        params = list(inspect.signature(cls.__init__).parameters)
        assert params == ["self", "ctx"], cls
    assert names[-4:] == ["sr3", "upscaler", "text-latent", "unet"]
