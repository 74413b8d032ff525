"""The error hierarchy: every deliberate error is an AugflowError, lives in schemas/errors.py, and
survives pickling (Ray sends worker exceptions to the driver by pickle)."""

from __future__ import annotations

import ast
import inspect
import pickle
from pathlib import Path

import pytest

from augflow.schemas import errors
from augflow.schemas.errors import (
    AugflowError,
    CommitConflictError,
    DatasetRefError,
    QualityGateError,
    RegistryError,
    RequestError,
    StorageError,
    VersionNotFoundError,
)

REPO = Path(__file__).resolve().parents[2]
ERROR_CLASSES = [
    c for _, c in inspect.getmembers(errors, inspect.isclass) if c.__module__ == errors.__name__
]


def test_every_error_class_is_an_augflow_error() -> None:
    assert len(ERROR_CLASSES) >= 11
    assert all(issubclass(c, AugflowError) for c in ERROR_CLASSES)


def test_subclasses_are_catchable_by_their_family() -> None:
    assert issubclass(CommitConflictError, StorageError)
    assert issubclass(VersionNotFoundError, RegistryError)
    # Both a registry error and a ValueError: pydantic validators turn it into a field error.
    assert issubclass(DatasetRefError, RegistryError) and issubclass(DatasetRefError, ValueError)
    assert issubclass(RequestError, ValueError)


def test_request_error_names_the_field_and_pickles_whole() -> None:
    err = RequestError("operation.strength", "must be in (0, 1]")
    assert str(err) == "request field `operation.strength`: must be in (0, 1]"
    back = pickle.loads(pickle.dumps(err))
    assert type(back) is RequestError
    assert (back.field, back.message, str(back)) == (err.field, err.message, str(err))


def test_quality_gate_error_lists_failures_and_pickles_whole() -> None:
    failed = ["row_count: expected 10, found 9", "no_nan: 2 rows have NaN"]
    err = QualityGateError("cats", failed, "file:///out/report.md")
    text = str(err)
    assert "dataset `cats`" in text and "nothing was registered" in text
    assert "  - row_count: expected 10, found 9\n  - no_nan: 2 rows have NaN" in text
    assert text.endswith("full report: file:///out/report.md")
    failed.append("later mutation")  # the error keeps its own copy
    assert len(err.failed) == 2
    back = pickle.loads(pickle.dumps(err))
    assert (back.dataset, back.failed, back.report_uri, str(back)) == (
        "cats",
        err.failed,
        err.report_uri,
        text,
    )


@pytest.mark.parametrize(
    "cls", [c for c in ERROR_CLASSES if c not in (RequestError, QualityGateError)]
)
def test_plain_errors_pickle_with_their_message(cls: type[AugflowError]) -> None:
    back = pickle.loads(pickle.dumps(cls("what went wrong; what to do")))
    assert type(back) is cls and str(back) == "what went wrong; what to do"


def test_no_product_module_defines_its_own_exception() -> None:
    """Every error class of schemas/, tasks/ and flows/ lives in schemas/errors.py (so callers find
    them in one place). models/ is checked by its own tests."""
    own = {c.__name__ for c in ERROR_CLASSES}
    strays = []
    for pkg in ("schemas", "tasks", "flows"):
        for path in (REPO / pkg).rglob("*.py"):
            if path == REPO / "schemas" / "errors.py":
                continue
            for node in ast.walk(ast.parse(path.read_text())):
                if not isinstance(node, ast.ClassDef):
                    continue
                bases = {
                    b.id if isinstance(b, ast.Name) else getattr(b, "attr", "") for b in node.bases
                }
                if any(b.endswith(("Error", "Exception")) or b in own for b in bases):
                    strays.append(f"{path.relative_to(REPO)}:{node.name}")
    assert strays == []
