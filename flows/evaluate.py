"""``augflow evaluate NAME@VERSION``: recompute the quality metrics of a registered version.

Reads the version's committed shard files under ``--root`` (a local folder or ``s3://``), one at
a time, and recomputes what the gate measured at registration: the effect checks from the stored
metric columns, and the set-level checks — near-duplicates, memorisation, variant spread,
diversity and KID/FID against a reference (``--reference``; else the request's
``quality.reference``, else its inputs). With ``--proxy`` it also trains the proxy classifier
(issue 13) with and without the version's labelled rows and reports the lift (``--real`` names the
real labelled images; default: the version's inputs). Prints a table, or JSON with ``--json``.
Exits 1 when a check fails (the same code as a refused ``augflow run``), 3 when the version cannot
be read.

Its own typer app (``python -m augflow.flows.evaluate``), registered in flows/cli.py as the
``evaluate`` command.
"""

from __future__ import annotations

import json
import sys
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

EXIT_CHECKS_FAILED = 1
EXIT_FAILED = 3

console = Console(stderr=True, soft_wrap=True)
out = Console(soft_wrap=True)


def evaluate_version(
    root: str, ref: str, reference: str | None = None, features: str | None = None
) -> dict[str, Any]:
    """The metrics and checks of ``ref`` (NAME, NAME@VERSION or NAME@latest) under ``root``."""
    from augflow.schemas.names import parse_ref
    from augflow.schemas.request import parse_request
    from augflow.tasks.quality_sets import as_quality_check, effect_level, set_level
    from augflow.tasks.register import get_version
    from augflow.tasks.storage import Storage

    storage = Storage(root)
    name, version = parse_ref(ref)
    entry = get_version(storage, name, version)
    request = parse_request(entry.request)
    files = [f.key for f in entry.files if f.rows]
    checks, metrics = effect_level(storage, request, files)
    results, set_metrics = set_level(storage, request, files, reference, features)
    checks += [as_quality_check(r) for r in results]
    return {
        "name": entry.name,
        "version": entry.version,
        "root": storage.root,
        "rows": entry.num_rows,
        "operation": request.operation.kind,
        "reference": reference or request.quality.reference or request.inputs,
        "passed": all(c.passed for c in checks),
        "checks": [c.model_dump(mode="json") for c in checks],
        "metrics": {**metrics, **set_metrics},
        "registered_metrics": entry.quality.metrics,
    }


def evaluate(
    ref: Annotated[str, typer.Argument(help="NAME@VERSION (or NAME, NAME@latest)")],
    root: Annotated[
        str,
        typer.Option("--root", envvar="AUGFLOW_ROOT", help="output root URI holding the registry"),
    ] = "augflow-data",
    reference: Annotated[
        str | None,
        typer.Option(
            "--reference",
            help="images to compare with: a folder, Parquet or NAME@VERSION (default: the "
            "request's quality.reference, else its inputs)",
        ),
    ] = None,
    features: Annotated[
        str | None,
        typer.Option("--features", help="feature extractor: 'bundled' or a local CLIP folder"),
    ] = None,
    proxy: bool = typer.Option(
        False, "--proxy", help="also measure the proxy-classifier lift of the labelled rows"
    ),
    real: Annotated[
        str | None,
        typer.Option(
            "--real",
            help="with --proxy: the real labelled images (Parquet/folder with a `label` column, "
            "or NAME@VERSION); default: the version's inputs",
        ),
    ] = None,
    seeds: int = typer.Option(5, "--seeds", min=1, help="with --proxy: classifier seeds"),
    as_json: bool = typer.Option(False, "--json", help="print JSON"),
) -> None:
    """Recompute a registered version's quality metrics (set-level and effect checks)."""
    from augflow.schemas.errors import AugflowError

    try:
        doc = evaluate_version(root, ref, reference, features)
        if proxy:
            from augflow.tasks.proxy import evaluate_proxy

            result = evaluate_proxy(root, ref, real=real, seeds=seeds)
            doc["proxy"] = result.to_json()
            doc["proxy_line"] = result.line()
    except AugflowError as exc:
        console.print(f"[red]error:[/] {exc}")
        raise typer.Exit(EXIT_FAILED) from None
    if as_json:
        sys.stdout.write(json.dumps(doc, indent=2) + "\n")
    else:
        _print(doc)
    if not doc["passed"]:
        raise typer.Exit(EXIT_CHECKS_FAILED)


def _print(doc: dict[str, Any]) -> None:
    verdict = "passed" if doc["passed"] else "FAILED"
    out.print(
        f"[bold]{doc['name']}@{doc['version']}[/]  {doc['rows']} rows, {doc['operation']}, "
        f"checks {verdict}; reference: {doc['reference'] or 'none'}"
    )
    table = Table("", "check", "observed", "threshold", "detail")
    for c in doc["checks"]:
        table.add_row(
            "✓" if c["passed"] else "✗",
            c["name"],
            _fmt(c["observed"]),
            _fmt(c["threshold"]),
            c["detail"],
        )
    out.print(table)
    metrics = Table("metric", "value", "at registration")
    for k, v in sorted(doc["metrics"].items()):
        metrics.add_row(k, _fmt(v), _fmt(doc["registered_metrics"].get(k)))
    out.print(metrics)
    if "proxy_line" in doc:
        out.print(doc["proxy_line"])


def _fmt(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


app = typer.Typer(help="Recompute a registered version's quality metrics.", add_completion=False)
app.command()(evaluate)

if __name__ == "__main__":  # pragma: no cover
    app()
