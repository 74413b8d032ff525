"""The ``augflow`` command line: run and plan requests, list and show registered datasets."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

# augflow talks to nothing but its own services: no telemetry from the local Prefect server Prefect
# starts when no API URL is set, no usage stats from Ray. Users can still opt in explicitly.
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")

app = typer.Typer(help="Batch data augmentation with diffusion models.", no_args_is_help=True)
datasets_app = typer.Typer(help="Registered dataset versions.", no_args_is_help=True)
app.add_typer(datasets_app, name="datasets")
console = Console(stderr=True, soft_wrap=True)
out = Console(soft_wrap=True)

EXIT_CHECKS_FAILED = 1
EXIT_BAD_REQUEST = 2
EXIT_FAILED = 3

RequestFile = Annotated[Path, typer.Argument(help="request file (YAML)", show_default=False)]
RootOption = Annotated[
    str,
    typer.Option("--root", envvar="AUGFLOW_ROOT", help="output root URI holding the registry"),
]
OutputOption = Annotated[
    str | None, typer.Option("--output", help="override the request's output root URI")
]


def _load(path: Path, output: str | None):
    from augflow.schemas import RequestError, load_request, parse_request

    try:
        request = load_request(path)
        if output is not None:
            request = parse_request({**request.model_dump(mode="json"), "output": output})
        return request
    except RequestError as exc:
        console.print(f"[red]error:[/] {exc}")
        raise typer.Exit(EXIT_BAD_REQUEST) from None


@app.command()
def plan(
    request_file: RequestFile,
    output: OutputOption = None,
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Dry run: shards, images, output URIs and the request hash. Computes nothing."""
    from augflow.schemas import AugflowError
    from augflow.schemas.records import variants_per_source
    from augflow.tasks import layout as keys
    from augflow.tasks.plan import plan_request
    from augflow.tasks.storage import Storage

    request = _load(request_file, output)
    try:
        p = plan_request(request)
    except AugflowError as exc:
        console.print(f"[red]error:[/] {exc}")
        raise typer.Exit(EXIT_BAD_REQUEST) from None
    storage, layout = Storage(request.output), keys.RunLayout(p.request_hash)
    summary = {
        "dataset": p.dataset,
        "version": p.version,
        "request_hash": p.request_hash,
        "operation": request.operation.kind,
        "images": p.num_rows,
        "shards": len(p.shards),
        # every object under the inputs: an input item, or a skip by a documented rule
        "inputs": p.num_inputs,
        "skipped": p.skipped,
        "registry_entry": storage.uri(keys.registry_entry(p.dataset, p.version)),
        "data_files": [storage.uri(layout.data_file(sid)) for sid in p.shard_ids()],
    }
    if as_json:
        # plain json: rich's highlighter takes seconds on the 100000 URIs of a big plan
        sys.stdout.write(json.dumps(summary, indent=2) + "\n")
        return
    table = Table(title=f"{p.dataset}@{p.version} — {p.num_rows} images in {len(p.shards)} shards")
    for col in ("shard", "sources", "rows", "output"):
        table.add_column(col)
    per_source = variants_per_source(request)
    for s in p.shards[:20]:
        table.add_row(
            s.shard_id,
            str(s.num_sources),
            str(s.num_sources * per_source),
            storage.uri(layout.data_file(s.shard_id)),
        )
    if len(p.shards) > 20:
        table.add_row("…", "", "", f"{len(p.shards) - 20} more shards")
    out.print(table)
    for reason, n in p.skipped.items():
        out.print(f"skipped       {n} object{'s' if n != 1 else ''}: {reason}")
    out.print(f"request hash  {p.request_hash}")
    out.print(f"registers as  {p.dataset}@{p.version} at {summary['registry_entry']}")


@app.command()
def run(
    request_file: RequestFile,
    output: OutputOption = None,
    verbose: bool = typer.Option(False, "--verbose", "-v", help="show Prefect's logs"),
) -> None:
    """Run a request: plan, compute on Ray, check quality, register. Prints name@version."""
    if not verbose:
        os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from augflow.flows.augment import augment
    from augflow.schemas import AugflowError, InputError, QualityGateError, RequestError
    from augflow.tasks import progress
    from augflow.tasks.inputs import check_inputs

    request = _load(request_file, output)
    try:
        check_inputs(request)  # bad inputs exit 2 before anything starts, as in `plan`
    except InputError as exc:
        console.print(f"[red]error:[/] {exc}")
        raise typer.Exit(EXIT_BAD_REQUEST) from None
    try:
        bar = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("images"),
            TimeElapsedColumn(),
            console=console,
            transient=True,
        )
        with bar:
            tid = bar.add_task(request.dataset, total=None)

            def listener(event: progress.Event) -> None:
                if isinstance(event, progress.Planned):
                    bar.update(tid, total=event.total_rows)
                else:
                    bar.advance(tid, event.num_rows + event.num_quarantined)

            with progress.listening(listener):
                outcome = augment(request)
    except QualityGateError as exc:
        console.print(f"[red]quality checks failed; nothing was registered for {exc.dataset}[/]")
        for line in exc.failed:
            console.print(f"  [red]✗[/] {line}")
        console.print(f"report: {exc.report_uri}")
        raise typer.Exit(EXIT_CHECKS_FAILED) from None
    except (InputError, RequestError) as exc:  # found while planning: the same code as `plan`
        console.print(f"[red]error:[/] {exc}")
        raise typer.Exit(EXIT_BAD_REQUEST) from None
    except AugflowError as exc:
        console.print(f"[red]error:[/] {exc}")
        raise typer.Exit(EXIT_FAILED) from None
    word = "registered" if outcome.status == "registered" else "already registered"
    console.print(
        f"{word}: {outcome.num_rows} rows ({outcome.num_quarantined} quarantined), "
        f"{outcome.shards_computed} shards computed, {outcome.shards_skipped} reused"
    )
    for reason, n in outcome.skipped.items():
        console.print(f"skipped {n} input object{'s' if n != 1 else ''}: {reason}")
    if outcome.preview_uri:
        console.print(f"preview: {outcome.preview_uri}")
    if outcome.report_uri:
        console.print(f"quality report: {outcome.report_uri}")
    out.print(f"{outcome.ref} {outcome.uri}", soft_wrap=True)


@app.command()
def submit(
    request_file: RequestFile,
    output: OutputOption = None,
    deployment: str = typer.Option("augment/on-demand", "--deployment", help="FLOW/DEPLOYMENT"),
    wait: bool = typer.Option(False, "--wait", help="follow the run to name@version"),
    force: bool = typer.Option(False, "--force", help="start a new run even if one exists"),
    timeout: float | None = typer.Option(None, "--timeout", help="seconds to wait at most"),
) -> None:
    """Trigger a deployment run for a request (the same request twice starts one run)."""
    from augflow.flows import submit as submitting
    from augflow.tasks import layout
    from augflow.tasks.register import list_versions
    from augflow.tasks.storage import Storage

    request = _load(request_file, output)
    run = submitting.submit(request, deployment, force=force)
    url = submitting.run_url(run)
    out.print(f"flow run {run.id} ({run.name})" + (f" {url}" if url else ""))
    if not wait:
        return
    final = submitting.wait(run, timeout=timeout)
    state = final.state
    if state is None or not state.is_completed():
        name = state.name if state else "unknown"
        console.print(f"[red]flow run {run.name} ended {name}:[/] {state.message if state else ''}")
        raise typer.Exit(EXIT_FAILED)
    storage = Storage(request.output)
    mine = [
        e for e in list_versions(storage, request.dataset) if e.request_hash == request.request_hash
    ]
    if not mine:
        console.print(
            f"[red]flow run {run.name} completed but no version of {request.dataset} is registered[/]"
        )
        raise typer.Exit(EXIT_FAILED)
    entry = mine[-1]
    out.print(f"{entry.ref} {storage.uri(layout.registry_entry(entry.name, entry.version))}")


@datasets_app.command("list")
def datasets_list(
    root: RootOption = "augflow-data", as_json: bool = typer.Option(False, "--json")
) -> None:
    """Every registered dataset under the root, with its latest version."""
    from augflow.tasks.register import list_datasets
    from augflow.tasks.storage import Storage

    found = list_datasets(Storage(root))
    if as_json:
        out.print_json(json.dumps([d.model_dump(mode="json") for d in found]))
        return
    table = Table(title=f"datasets under {Storage(root).root}")
    for col in ("name", "versions", "latest", "rows", "created"):
        table.add_column(col)
    for d in found:
        table.add_row(
            d.name,
            str(d.num_versions),
            d.latest_version,
            str(d.latest_num_rows),
            d.created_at.isoformat(timespec="seconds"),
        )
    out.print(table)


@datasets_app.command("show")
def datasets_show(
    ref: Annotated[str, typer.Argument(help="NAME or NAME@VERSION (VERSION may be 'latest')")],
    root: RootOption = "augflow-data",
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """One registered version: its files, row count, checks and the request that made it."""
    from augflow.schemas import RegistryError
    from augflow.schemas.names import parse_ref
    from augflow.tasks.register import get_version
    from augflow.tasks.storage import Storage

    storage = Storage(root)
    try:
        name, version = parse_ref(ref)
        entry = get_version(storage, name, version)
    except RegistryError as exc:
        console.print(f"[red]error:[/] {exc}")
        raise typer.Exit(EXIT_FAILED) from None
    doc = entry.model_dump(mode="json")
    # The entry stores keys relative to the root; the JSON view adds URIs under the root read.
    doc["root"] = storage.root
    for group in ("files", "quarantine_files"):
        for f in doc[group]:
            f["uri"] = storage.uri(f["key"])
    doc["checks_passed"] = entry.quality.passed
    if as_json:
        sys.stdout.write(json.dumps(doc, indent=2) + "\n")
        return
    out.print(
        f"[bold]{entry.name}@{entry.version}[/]  {entry.num_rows} rows, "
        f"{entry.num_quarantined} quarantined, checks {'passed' if entry.quality.passed else 'FAILED'}"
    )
    out.print(
        f"created {entry.created_at.isoformat(timespec='seconds')}  code {entry.code_version}"
    )
    out.print(f"model {entry.model.id} @ {entry.model.revision}")
    for f in entry.files:
        out.print(f"  {storage.uri(f.key)}  ({f.rows} rows, {f.bytes} bytes)", soft_wrap=True)


if __name__ == "__main__":  # pragma: no cover
    app()
