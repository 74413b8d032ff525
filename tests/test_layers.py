"""The layer order schemas → models → tasks → flows, enforced on the source itself.

Every ``import augflow.<layer>`` (module level or inside a function) must point at the same or a
lower layer; models/ imports neither Prefect nor Ray; tasks/ leaves Prefect to flows/ (one
documented exception: loading credentials from a Prefect Secret block).
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LAYERS = ("schemas", "models", "tasks", "flows")
#: (module file, third-party package) pairs allowed to break the per-layer rules below, and why.
EXCEPTIONS = {
    # a Prefect Secret block is one of the documented credential sources; imported only when set
    ("tasks/credentials.py", "prefect"),
}
FORBIDDEN = {
    "schemas": {"prefect", "ray", "torch", "diffusers", "fsspec", "s3fs"},
    "models": {"prefect", "ray"},
    "tasks": {"prefect"},
    "flows": set(),
}


def _imports(path: Path) -> list[tuple[str, int]]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found: list[tuple[str, int]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(a.name, node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.module, node.lineno))
    return found


def _modules() -> list[Path]:
    return sorted(p for layer in LAYERS for p in (ROOT / layer).rglob("*.py"))


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(ROOT)))
def test_imports_follow_the_layer_order(path: Path) -> None:
    rel = path.relative_to(ROOT).as_posix()
    layer = rel.split("/", 1)[0]
    rank = LAYERS.index(layer)
    problems = []
    for module, line in _imports(path):
        parts = module.split(".")
        if parts[0] == "augflow" and len(parts) > 1 and parts[1] in LAYERS:
            if LAYERS.index(parts[1]) > rank:
                problems.append(f"{rel}:{line} imports {module} (a higher layer than {layer})")
        elif parts[0] in FORBIDDEN[layer] and (rel, parts[0]) not in EXCEPTIONS:
            problems.append(f"{rel}:{line} imports {module}, which {layer}/ must not use")
    assert problems == []


def test_the_layer_test_sees_every_layer() -> None:
    layers = {p.relative_to(ROOT).parts[0] for p in _modules()}
    assert layers == set(LAYERS)
    # and it would notice a violation: a synthetic backwards import is flagged
    fake = ROOT / "schemas" / "__init__.py"
    assert any(m.startswith("augflow.schemas") for m, _ in _imports(fake))


def test_the_driver_side_of_execution_does_not_load_torch() -> None:
    # The flow process plans, fans out and validates; only Ray actors load torch and the model.
    code = (
        "import sys, augflow.tasks.execute, augflow.flows.steps; "
        "print(sorted(m for m in ('torch', 'diffusers') if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=300
    )
    assert out.stdout.strip() == "[]", out.stderr[-2000:]
