"""The ``augflow`` command line: run and plan requests; list, show and export registered datasets.

Every command takes the output root as ``--root`` (``--output`` is the same option), else
``AUGFLOW_ROOT``, else ``augflow-data``; for ``plan``/``run``/``submit`` a request's own
``output`` comes before ``AUGFLOW_ROOT``. Relative paths in a request file (``inputs``,
``output``, ``operation.mask``, and a ``model.id`` that is a folder next to the file or starts with
``./`` or ``../``) are relative to the file's folder, not to the working directory.

Exit codes: 0 done; 1 quality checks failed (``run``) or nothing registered under the root
(``datasets``: no registry, no such dataset or version); 2 a bad request or reference;
3 any other failure (storage, workers).
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Annotated, Any, TextIO

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from augflow.flows.evaluate import evaluate as evaluate_command
from augflow.flows.worker import worker as _worker

# augflow talks to nothing but its own services: no telemetry from the local Prefect server Prefect
# starts when no API URL is set, no usage stats from Ray. Users can still opt in explicitly.
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DO_NOT_TRACK", "1")
# A first run on a fresh HOME creates and migrates Prefect's database before its temporary server
# answers; Prefect's 20 s default fails that on a busy machine.
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")

app = typer.Typer(help="Batch data augmentation with diffusion models.", no_args_is_help=True)
datasets_app = typer.Typer(help="Registered dataset versions.", no_args_is_help=True)
app.add_typer(datasets_app, name="datasets")
app.command("evaluate")(evaluate_command)  # issue 11: flows/evaluate.py
app.command()(_worker)  # issue 14: `augflow worker`, a Prefect worker with warm actors
console = Console(stderr=True, soft_wrap=True)
out = Console(soft_wrap=True)

EXIT_CHECKS_FAILED = 1
EXIT_NOT_FOUND = 1
EXIT_BAD_REQUEST = 2
EXIT_FAILED = 3

RequestFile = Annotated[Path, typer.Argument(help="request file (YAML)", show_default=False)]
RootOption = Annotated[
    str | None,
    typer.Option(
        "--root",
        "--output",
        help="output root URI (data, registry, card); default: AUGFLOW_ROOT, else augflow-data",
        show_default=False,
    ),
]
RequestRootOption = Annotated[
    str | None,
    typer.Option(
        "--root",
        "--output",
        help="output root URI; default: the request's `output`, else AUGFLOW_ROOT, else "
        "augflow-data",
        show_default=False,
    ),
]
JsonOption = Annotated[bool, typer.Option("--json", help="machine-readable output on stdout")]


def _error(where: Console, what: object) -> None:
    # messages quote user input (paths, names, lists in brackets): never read them as markup
    where.print("[red]error:[/] " + escape(str(what)))


def _version_callback(value: bool) -> None:
    if value:
        from augflow.tasks.register import code_version

        out.print(code_version().replace("unknown", "augflow (version unknown)"))
        raise typer.Exit()


@app.callback()
def main(
    version: Annotated[
        bool,
        typer.Option(
            "--version",
            callback=_version_callback,
            is_eager=True,
            help="print augflow's version and exit",
        ),
    ] = False,
) -> None:
    """Batch data augmentation with diffusion models."""


# --- requests ----------------------------------------------------------------------------------


def _root(root: str | None) -> str:
    from augflow.schemas.settings import settings

    return root if root else settings().root


def _near(value: str, base: Path) -> str:
    """A local path of a request file, made absolute against the file's folder."""
    if "://" in value:
        return value
    path = Path(value).expanduser()
    return str(path) if path.is_absolute() else str((base / path).resolve())


def _model_near(model_id: str, base: Path) -> str:
    # A model id is a hub id (owner/name), bundled:NAME, or a folder: only the last is a path.
    if ":" in model_id or Path(model_id).expanduser().is_absolute():
        return model_id
    if model_id.startswith(("./", "../")) or (base / model_id).exists():
        return str((base / model_id).resolve())
    return model_id


def resolve_request_paths(request: Any, base: Path, root: str | None) -> dict[str, Any]:
    """The request as a mapping, with its relative paths resolved against ``base`` (the request
    file's folder) and its output root chosen (``root`` > the request's ``output`` >
    AUGFLOW_ROOT > the default)."""
    from augflow.schemas.names import looks_like_ref

    data = request.model_dump(mode="json")
    if root:
        data["output"] = root
    elif "output" in request.model_fields_set:
        data["output"] = _near(request.output, base)
    else:
        data["output"] = _root(None)
    if data.get("inputs") and not looks_like_ref(data["inputs"]):
        data["inputs"] = _near(data["inputs"], base)
    if data["operation"].get("mask"):
        data["operation"]["mask"] = _near(data["operation"]["mask"], base)
    data["model"]["id"] = _model_near(data["model"]["id"], base)
    return data


def _load(path: Path, root: str | None) -> Any:
    from augflow.schemas import RequestError, load_request, parse_request

    try:
        request = load_request(path)
        return parse_request(resolve_request_paths(request, path.resolve().parent, root))
    except RequestError as exc:
        _error(console, exc)
        raise typer.Exit(EXIT_BAD_REQUEST) from None


# --- plan --------------------------------------------------------------------------------------


@app.command()
def plan(
    request_file: RequestFile, root: RequestRootOption = None, as_json: JsonOption = False
) -> None:
    """Dry run: what a run would compute, reuse and register. Computes nothing, writes nothing."""
    from augflow.schemas import AugflowError
    from augflow.schemas.errors import StorageError, VersionNotFoundError
    from augflow.tasks import layout as keys
    from augflow.tasks.plan import plan_request
    from augflow.tasks.register import get_version
    from augflow.tasks.storage import Storage

    request = _load(request_file, root)
    try:
        p = plan_request(request)
        storage, layout = Storage(request.output), keys.RunLayout(p.request_hash)
        try:
            registered = get_version(storage, p.dataset, p.version)
        except VersionNotFoundError:
            registered = None
        committed = {keys.shard_id_of(k) for k in storage.list(layout.commits)}
    except StorageError as exc:
        _error(console, exc)
        raise typer.Exit(EXIT_FAILED) from None
    except AugflowError as exc:
        _error(console, exc)
        raise typer.Exit(EXIT_BAD_REQUEST) from None
    reuse = sum(sid in committed for sid in p.shard_ids()) if committed else 0
    entry_uri = storage.uri(keys.registry_entry(p.dataset, p.version))
    summary: dict[str, Any] = {
        "dataset": p.dataset,
        "version": p.version,
        "request_hash": p.request_hash,
        "operation": request.operation.kind,
        "root": storage.root,
        "images": p.num_rows,
        "shards": len(p.shards),
        # every object under the inputs: an input item, or a skip by a documented rule
        "inputs": p.num_inputs,
        "skipped": p.skipped,
        "registered": registered is not None,
        "registry_entry": entry_uri,
        "would_compute_shards": 0 if registered else len(p.shards) - reuse,
        "committed_shards": reuse,
        "carried_shards": len(p.carried),
        "base_version": p.base_version,
        # shard ids, not shard specs: a generate plan's shards are computed on demand
        "data_files": [storage.uri(layout.data_file(sid)) for sid in p.shard_ids()],
    }
    if as_json:
        # plain json: rich's highlighter takes seconds on the 100000 URIs of a big plan
        sys.stdout.write(json.dumps(summary, indent=2) + "\n")
        return
    ref = f"{p.dataset}@{p.version}"
    if registered is not None:
        out.print(
            f"[bold]{ref}[/] is already registered ({registered.num_rows} rows, created "
            f"{registered.created_at.isoformat(timespec='seconds')}).\n"
            f"`augflow run` would compute nothing and print {ref}.\n"
            f"registry entry  {entry_uri}"
        )
        return
    total = len(p.shards) + len(p.carried)
    table = Table(title=f"{ref} — {p.num_rows} images in {total} shards")
    for col in ("shard", "sources", "output", "state"):
        table.add_column(col)
    for s in p.shards[:20]:
        state = "committed: reused" if s.shard_id in committed else "to compute"
        table.add_row(
            s.shard_id, str(s.num_sources), storage.uri(layout.data_file(s.shard_id)), state
        )
    if len(p.shards) > 20:
        table.add_row("…", "", f"{len(p.shards) - 20} more shards", "")
    out.print(table)
    would = [f"compute {len(p.shards) - reuse} shards"]
    if reuse:
        would.append(f"reuse {reuse} committed by an earlier, unfinished run")
    if p.carried:
        would.append(f"carry {len(p.carried)} unchanged shards of {p.dataset}@{p.base_version}")
    out.print(f"a run would {', '.join(would)}, check quality and register {ref}")
    for reason, n in p.skipped.items():
        out.print(f"skipped       {n} object{'s' if n != 1 else ''}: {reason}")
    out.print(f"request hash  {p.request_hash}")
    out.print(f"registry entry {entry_uri}")


# --- run ---------------------------------------------------------------------------------------


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "–:––"
    s = round(seconds)
    return (
        f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"
    )


class _Display:
    """The live progress line: phase, bar, images done of the total, rate, ETA, elapsed."""

    def __init__(self, err: TextIO, dataset: str) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

        from augflow.tasks.progress import Tracker

        self.console = Console(file=err, soft_wrap=True, stderr=True)
        self.tracker = Tracker()
        self.start = time.monotonic()
        self.live = self.console.is_terminal
        self.last_phase = ""
        self.last_line = 0.0
        self.bar = Progress(
            TextColumn("[bold]{task.description}[/] {task.fields[phase]:<11}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn(
                "images  {task.fields[rate]}  ETA {task.fields[eta]}  {task.fields[elapsed]}"
            ),
            console=self.console,
            transient=True,
            auto_refresh=True,
            refresh_per_second=4,
        )
        self.task = self.bar.add_task(
            dataset, total=None, phase="starting", rate="", eta="", elapsed=""
        )

    def __enter__(self) -> _Display:
        if self.live:
            self.bar.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.live:
            self.bar.stop()

    def _log_line(self, t: Any) -> None:
        # stderr is a log, not a terminal: a line per phase, and one every 10 s while computing
        now = time.monotonic()
        if t.phase != self.last_phase:
            self.last_phase, self.last_line = t.phase, now
            if t.phase == "computing" and t.total is not None:
                self.console.print(f"computing {t.total} images")
            elif t.phase != "done":
                self.console.print(t.phase)
        elif t.phase == "computing" and now - self.last_line >= 10:
            self.last_line = now
            rate = t.rate()
            self.console.print(
                f"computing: {t.done}/{t.total} images, "
                f"{f'{rate:.1f}/s' if rate else '–/s'}, ETA {_duration(t.eta())}"
            )

    def __call__(self, event: Any) -> None:
        self.tracker.on(event)
        t = self.tracker
        if not self.live:
            self._log_line(t)
            return
        rate = t.rate()
        self.bar.update(
            self.task,
            total=t.total,
            completed=t.done,
            phase=t.phase,
            rate=f"{rate:.1f}/s" if rate else "–/s",
            eta=_duration(t.eta()),
            elapsed=_duration(time.monotonic() - self.start),
        )


@app.command()
def run(
    request_file: RequestFile,
    root: RequestRootOption = None,
    verbose: bool = typer.Option(
        False, "--verbose", "-v", help="show Prefect, Ray and GX output here instead of the log"
    ),
) -> None:
    """Run a request: plan, compute on Ray, check quality, register. Prints name@version."""
    request = _load(request_file, root)
    if verbose:
        _run(request, sys.stdout, sys.stderr, None)
        return
    from augflow.flows.quiet import new_log_path, third_party_output_to

    log_path = new_log_path(request.dataset)
    # fds stay on the log until the process exits: Prefect and Ray print from exit handlers too
    with third_party_output_to(log_path, restore=False) as (ui_out, ui_err):
        _run(request, ui_out, ui_err, log_path)


def _run(request: Any, ui_out: TextIO, ui_err: TextIO, log_path: Path | None) -> None:
    from augflow.schemas import AugflowError, InputError, QualityGateError, RequestError
    from augflow.tasks import layout, progress
    from augflow.tasks.inputs import check_inputs
    from augflow.tasks.preflight import preflight
    from augflow.tasks.storage import Storage

    say = Console(file=ui_err, soft_wrap=True)
    show = Console(file=ui_out, soft_wrap=True)
    log_line = f"log: {log_path}" if log_path else None
    started = time.monotonic()
    try:
        check_inputs(request)  # bad inputs exit 2 before anything starts, as in `plan`
    except InputError as exc:
        _error(say, exc)
        raise typer.Exit(EXIT_BAD_REQUEST) from None
    try:
        # Output root, inputs and model are checked before Prefect (seconds just to import) and
        # Ray start, so a run that cannot succeed fails in about a second.
        preflight(request)
        # issue 14: Ray, the actors and the first shards start before Prefect is imported
        from augflow.flows.startup import run_settings, start_early

        own_server = start_early(request)
        from augflow.flows.augment import augment

        with (
            run_settings(own_server),
            _Display(ui_err, request.dataset) as display,
            progress.listening(display),
        ):
            progress.phase("starting")
            outcome = augment(request)
            progress.phase("done")
    except QualityGateError as exc:
        say.print(f"[red]quality checks failed; nothing was registered for {exc.dataset}[/]")
        for line in exc.failed:
            say.print("  [red]✗[/] " + escape(line))
        say.print(f"report: {exc.report_uri}")
        _print_data_docs(Storage(request.output), exc.report_uri, say)
        if log_line:
            say.print(log_line)
        raise typer.Exit(EXIT_CHECKS_FAILED) from None
    except (InputError, RequestError) as exc:  # found while planning: the same code as `plan`
        _error(say, exc)
        raise typer.Exit(EXIT_BAD_REQUEST) from None
    except AugflowError as exc:
        _error(say, exc)
        if log_line:
            say.print(log_line)
        raise typer.Exit(EXIT_FAILED) from None
    except Exception as exc:
        _error(say, f"{type(exc).__name__}: {exc}")
        if log_line:
            say.print(f"details in the {log_line}")
        raise typer.Exit(EXIT_FAILED) from None
    word = "registered" if outcome.status == "registered" else "already registered"
    say.print(
        f"{word}: {outcome.num_rows} rows ({outcome.num_quarantined} quarantined), "
        f"{outcome.shards_computed} shards computed, {outcome.shards_skipped} reused "
        f"in {time.monotonic() - started:.1f}s"
    )
    for reason, n in outcome.skipped.items():
        say.print(f"skipped {n} input object{'s' if n != 1 else ''}: {reason}")
    storage = Storage(request.output)
    if outcome.status != "registered":
        _ensure_card_lists(storage, outcome.ref, say)
    if outcome.preview_uri:
        say.print(f"preview: {outcome.preview_uri}")
    if outcome.report_uri:
        say.print(f"quality report: {outcome.report_uri}")
        _print_data_docs(storage, outcome.report_uri, say)
    say.print(
        f"card: {storage.uri(layout.DATASET_CARD)} "
        f"(datasets.load_dataset(ROOT, {outcome.dataset!r}) or {outcome.ref!r})"
    )
    if log_line:
        say.print(log_line)
    show.print(f"{outcome.ref} {outcome.uri}", soft_wrap=True, highlight=False)


def _print_data_docs(storage: Any, report_uri: str, say: Console) -> None:
    """Name the GX Data Docs beside a quality report, when they were written (a version
    validated before augflow wrote them, or whose rendering failed, has none)."""
    from augflow.tasks.gx_docs import data_docs_uri

    docs = data_docs_uri(storage, report_uri)
    if docs:
        say.print(f"data docs: {docs}")


def _ensure_card_lists(storage: Any, ref: str, say: Console) -> None:
    """A version registered before roots had cards (or whose card write failed) gets one when
    its request is run again."""
    from augflow.tasks.card import read_front_matter, refresh_card

    try:
        configs = {c.get("config_name") for c in read_front_matter(storage).get("configs", [])}
        if ref not in configs:
            refresh_card(storage)
    except Exception as exc:  # the version is registered either way
        say.print(f"the dataset card was not updated: {escape(str(exc))}")


# --- submit ------------------------------------------------------------------------------------


@app.command()
def submit(
    request_file: RequestFile,
    root: RequestRootOption = None,
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

    request = _load(request_file, root)
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


# --- datasets ----------------------------------------------------------------------------------


def _storage(root: str | None) -> Any:
    from augflow.schemas import AugflowError
    from augflow.tasks.storage import Storage

    try:
        return Storage(_root(root))
    except AugflowError as exc:
        _error(console, exc)
        raise typer.Exit(EXIT_FAILED) from None


def _no_registry(storage: Any) -> None:
    console.print(
        f"no registry under {storage.root}: nothing was registered there. Pass the output root "
        "with --root or set AUGFLOW_ROOT."
    )


@datasets_app.command("list")
def datasets_list(root: RootOption = None, as_json: JsonOption = False) -> None:
    """Every registered dataset under the root, with its latest version.

    A root with no registry exits 1 (printing ``[]`` with --json)."""
    from augflow.schemas import AugflowError
    from augflow.tasks.register import has_registry, list_datasets

    storage = _storage(root)
    try:
        exists = has_registry(storage)
        found = list_datasets(storage) if exists else []
    except AugflowError as exc:
        _error(console, exc)
        raise typer.Exit(EXIT_FAILED) from None
    if as_json:
        sys.stdout.write(json.dumps([d.model_dump(mode="json") for d in found]) + "\n")
    if not exists:
        _no_registry(storage)
        raise typer.Exit(EXIT_NOT_FOUND)
    if as_json:
        return
    table = Table(title=f"datasets under {storage.root}")
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


def _entry(storage: Any, ref: str) -> Any:
    from augflow.schemas import AugflowError
    from augflow.schemas.errors import DatasetRefError, VersionNotFoundError
    from augflow.schemas.names import parse_ref
    from augflow.tasks.register import get_version, has_registry

    try:
        name, version = parse_ref(ref)
        if not has_registry(storage):
            _no_registry(storage)
            raise typer.Exit(EXIT_NOT_FOUND)
        return get_version(storage, name, version)
    except DatasetRefError as exc:
        _error(console, exc)
        raise typer.Exit(EXIT_BAD_REQUEST) from None
    except VersionNotFoundError as exc:
        _error(console, exc)
        raise typer.Exit(EXIT_NOT_FOUND) from None
    except AugflowError as exc:
        _error(console, exc)
        raise typer.Exit(EXIT_FAILED) from None


RefArgument = Annotated[
    str, typer.Argument(help="NAME or NAME@VERSION (VERSION may be 'latest')", show_default=False)
]


@datasets_app.command("show")
def datasets_show(ref: RefArgument, root: RootOption = None, as_json: JsonOption = False) -> None:
    """One registered version: its files, row count, checks and the request that made it.

    --json gives each file's ``uri`` (readable as is by pyarrow, datasets and Ray Data) next to
    its ``key`` relative to the root."""
    from augflow.tasks.card import config_name

    storage = _storage(root)
    entry = _entry(storage, ref)
    doc = entry.model_dump(mode="json")
    # The entry stores keys relative to the root; the JSON view adds URIs under the root read.
    doc["root"] = storage.root
    for group in ("files", "quarantine_files"):
        for f in doc[group]:
            f["uri"] = storage.uri(f["key"])
    doc["checks_passed"] = entry.quality.passed
    doc["config_name"] = config_name(entry.name, entry.version)
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
    out.print(
        f"load: datasets.load_dataset({storage.root.removeprefix('file://')!r}, "
        f"{config_name(entry.name, entry.version)!r}, split='train')",
        highlight=False,
    )


@datasets_app.command("export")
def datasets_export(
    ref: RefArgument,
    to: Annotated[
        str,
        typer.Option(
            "--to", help="destination URI: a folder or s3://bucket/prefix", show_default=False
        ),
    ],
    fmt: Annotated[
        str, typer.Option("--format", help="webdataset (tar shards) or imagefolder")
    ] = "webdataset",
    root: RootOption = None,
    samples_per_shard: Annotated[
        int, typer.Option("--samples-per-shard", min=1, help="rows per tar / per image folder")
    ] = 1000,
    max_shard_mb: Annotated[
        float, typer.Option("--max-shard-mb", min=0.001, help="a tar closes at this size too")
    ] = 256.0,
) -> None:
    """Export a version as WebDataset tars or a Hugging Face image folder."""
    from augflow.schemas import AugflowError
    from augflow.schemas.errors import ExportError
    from augflow.tasks.export import FORMATS, export_version

    if fmt not in FORMATS:
        console.print(f"[red]error:[/] --format must be one of: {', '.join(FORMATS)}")
        raise typer.Exit(EXIT_BAD_REQUEST)
    storage = _storage(root)
    entry = _entry(storage, ref)
    try:
        result = export_version(
            storage,
            entry,
            fmt,
            to,
            samples_per_shard=samples_per_shard,
            max_shard_bytes=max(1, int(max_shard_mb * 2**20)),
        )
    except ExportError as exc:
        _error(console, exc)
        raise typer.Exit(EXIT_BAD_REQUEST) from None
    except AugflowError as exc:
        _error(console, exc)
        raise typer.Exit(EXIT_FAILED) from None
    console.print(
        f"exported {result.ref}: {result.num_rows} rows in {len(result.files)} "
        f"{'shards' if fmt == 'webdataset' else 'folders'} to {result.uri}"
    )
    console.print(f"manifest: {result.manifest_uri}")
    out.print(result.pattern or result.uri, highlight=False)


@datasets_app.command("card")
def datasets_card(root: RootOption = None) -> None:
    """Rewrite the dataset card (README.md) at the root from its registry."""
    from augflow.schemas import AugflowError
    from augflow.tasks.card import refresh_card
    from augflow.tasks.register import has_registry

    storage = _storage(root)
    try:
        if not has_registry(storage):
            _no_registry(storage)
            raise typer.Exit(EXIT_NOT_FOUND)
        result = refresh_card(storage)
    except AugflowError as exc:
        _error(console, exc)
        raise typer.Exit(EXIT_FAILED) from None
    console.print(f"{len(result.configs)} configs: {', '.join(result.configs)}")
    out.print(result.uri, highlight=False)


def console_main() -> None:
    """The ``augflow`` console script: the Typer app, then a quick process exit
    (flows/process_exit.py) instead of Python's module teardown."""
    from augflow.flows.process_exit import exit_now

    try:
        app()  # standalone mode: always ends in SystemExit
    except SystemExit as exc:
        exit_now(exc.code)
    exit_now(0)


if __name__ == "__main__":  # pragma: no cover
    console_main()
