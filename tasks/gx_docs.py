"""Great Expectations Data Docs for a version: the gate's GX result rendered by a Checkpoint's
``UpdateDataDocsAction`` into a ``SiteBuilder`` site, and the HTML stored beside the quality
report.

GX users look for Data Docs; the gate's verdict and the Markdown/JSON report stay with
:mod:`augflow.tasks.validate`. Both the suite and the validation page are made from the GX result
the gate already produced, never from the rows again: the gate validates a version batch by batch
and sums the per-batch results into one (counts are sums over every row), so the Data Docs show
exactly the expectations the gate ran and the counts it found, at no cost that grows with the
version, and this module never needs to change when the gate's checks do. Each result carries its
expectation's type, arguments and ``meta``.

The site is rendered into a temporary folder and uploaded through
:class:`~augflow.tasks.storage.Storage` under ``RunLayout.data_docs_dir(version)``, so it lands on
S3 exactly like the report. Only the pages and the favicon they link are uploaded: GX's pages
inline their styles and take scripts and CSS from CDNs, and its ``static/`` folder (4 MB of fonts
and animated GIFs) is linked from no page. ``index.html`` is written last, so a site with an
index is complete.

Data Docs are a view of a result that the report already records: when rendering or uploading
fails, the run goes on (the gate has decided by then) and the reason is logged.

Plain functions, no Prefect; GX is imported lazily (the gate has imported it already in a run).
"""

from __future__ import annotations

import contextlib
import copy
import logging
import os
import tempfile
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from augflow.schemas.errors import StorageError
from augflow.schemas.request import AugmentRequest
from augflow.tasks.layout import RunLayout, data_docs_beside
from augflow.tasks.storage import Storage

log = logging.getLogger(__name__)

#: The Data Docs site GX renders into (one per context, so the name only has to be stable).
SITE = "augflow"
#: Files of the rendered site that are uploaded besides the pages (the only asset pages link).
_ASSETS = ("static/images/favicon.ico",)


def publish_data_docs(
    storage: Storage,
    request: AugmentRequest,
    version: str,
    gx_result: dict[str, Any],
) -> str | None:
    """Render ``gx_result`` as a Data Docs site and store it beside the version's report.

    ``gx_result`` is the gate's GX validation result as a JSON dict (what the quality report's
    ``great_expectations`` field holds). Returns the key of the site's ``index.html``, or None
    when the site could not be made (logged, never raised).
    """
    layout = RunLayout(request.request_hash)
    try:
        with tempfile.TemporaryDirectory(prefix="augflow-data-docs-") as site_dir:
            _render(request, version, gx_result, Path(site_dir))
            return _upload(storage, Path(site_dir), layout.data_docs_dir(version))
    except Exception as exc:  # the gate has decided; its report is the record
        log.warning(
            "Data Docs of %s@%s were not written: %s: %s",
            request.dataset,
            version,
            type(exc).__name__,
            exc,
        )
        return None


def data_docs_uri(storage: Storage, report_uri: str) -> str | None:
    """The URI of the Data Docs index beside the quality report at ``report_uri``, when it was
    written (a version validated before augflow wrote Data Docs, or whose rendering failed, has
    none)."""
    docs = data_docs_beside(report_uri)
    key = docs.removeprefix(storage.root + "/")
    try:
        return docs if key != docs and storage.exists(key) else None
    except StorageError as exc:  # a pointer in a summary is not worth failing a finished run
        log.warning("cannot check for Data Docs at %s: %s", docs, exc)
        return None


def suite_from_result(gx: Any, name: str, gx_result: dict[str, Any]) -> Any:
    """The ExpectationSuite a GX result was produced by: one expectation per result, in order.

    The check name the gate tags each expectation with (``meta.augflow_check``) becomes the
    expectation's notes, so the Data Docs pages name the checks the report names.
    """
    from great_expectations.expectations.expectation_configuration import (
        ExpectationConfiguration,
    )

    suite = gx.ExpectationSuite(name=name)
    for evr in gx_result.get("results", []):
        config = evr.get("expectation_config") or {}
        kwargs = {k: v for k, v in (config.get("kwargs") or {}).items() if k != "batch_id"}
        meta = dict(config.get("meta") or {})
        check = meta.get("augflow_check")
        suite.add_expectation_configuration(
            ExpectationConfiguration(
                type=config["type"],
                kwargs=kwargs,
                meta=meta,
                notes=f"augflow check `{check}`" if check else None,
            )
        )
    return suite


@contextlib.contextmanager
def quiet_gx_logs() -> Iterator[None]:
    # GX logs INFO chatter (per expectation, per action); a run's log wants its warnings only.
    # Its tqdm bars are switched off through the context's progress_bars config instead of
    # redirecting stderr, which is process-global and would swallow other threads' output.
    gx_logger = logging.getLogger("great_expectations")
    level = gx_logger.level
    gx_logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        gx_logger.setLevel(level)


def _render(
    request: AugmentRequest, version: str, gx_result: dict[str, Any], site_dir: Path
) -> None:
    # Offline by design (no usage analytics); must be set before GX is first imported.
    os.environ["GX_ANALYTICS_ENABLED"] = "false"
    import great_expectations as gx
    from great_expectations.checkpoint.checkpoint import CheckpointResult
    from great_expectations.core.expectation_validation_result import (
        ExpectationSuiteValidationResultSchema,
    )
    from great_expectations.core.run_identifier import RunIdentifier
    from great_expectations.data_context.types.base import ProgressBarsConfig
    from great_expectations.data_context.types.resource_identifiers import (
        ExpectationSuiteIdentifier,
        ValidationResultIdentifier,
    )

    with quiet_gx_logs():
        context = gx.get_context(mode="ephemeral")
        context.variables.progress_bars = ProgressBarsConfig(
            globally=False, metric_calculations=False
        )
        site: Any = {  # Any: GX's TypedDict for this omits SiteBuilder's own arguments
            "class_name": "SiteBuilder",
            # "how to" buttons link to GX tutorials: noise in a dataset's report
            "show_how_to_buttons": False,
            "store_backend": {
                "class_name": "TupleFilesystemStoreBackend",
                "base_directory": str(site_dir),
            },
            "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
        }
        context.add_data_docs_site(SITE, site)
        suite = context.suites.add(suite_from_result(gx, f"augflow-{request.dataset}", gx_result))
        # the run name is a folder of the site: the version (the suite names the dataset); GX
        # names the page after the data source and asset, `<dataset>-<version>` and `metrics`
        run_id = RunIdentifier(run_name=version, run_time=datetime.now(UTC))
        source = f"{request.dataset}-{version}"
        result = copy.deepcopy(gx_result)
        meta = result.setdefault("meta", {})
        meta.update(run_id=run_id.to_json_dict(), validation_time=run_id.run_time.isoformat())
        batch = meta.get("active_batch_definition")
        if isinstance(batch, dict):
            meta["active_batch_definition"] = {**batch, "datasource_name": source}
        for evr in result.get("results", []):
            kwargs = (evr.get("expectation_config") or {}).get("kwargs") or {}
            if "batch_id" in kwargs:
                kwargs["batch_id"] = f"{source}-metrics"
        key = ValidationResultIdentifier(
            expectation_suite_identifier=ExpectationSuiteIdentifier(name=suite.name),
            run_id=run_id,
            batch_identifier=f"{source}-metrics",
        )
        validation_result = ExpectationSuiteValidationResultSchema().load(result)
        # What the gate's Checkpoint's validation did with each batch's result: store it, so the
        # action can render it. The action is the Checkpoint's own; run on the result the
        # Checkpoint's batches add up to (run() would validate rows again).
        context.validation_results_store.set(key, validation_result)
        checkpoint = _docs_checkpoint(gx, context, source, suite)
        outcome = CheckpointResult(
            run_id=run_id, run_results={key: validation_result}, checkpoint_config=checkpoint
        )
        for action in checkpoint.actions:
            # as Checkpoint.run does: the action renders through this Checkpoint's context, not
            # whichever GX context another thread made current last
            action._data_context = context
            action.run(checkpoint_result=outcome)


def _docs_checkpoint(gx: Any, context: Any, source: str, suite: Any) -> Any:
    """A Checkpoint like the gate's, on the same kind of batch, whose action is
    ``UpdateDataDocsAction`` for :data:`SITE`."""
    from great_expectations.checkpoint import UpdateDataDocsAction

    batch_def = (
        context.data_sources.add_pandas(source)
        .add_dataframe_asset("metrics")
        .add_batch_definition_whole_dataframe("all_rows")
    )
    validation = context.validation_definitions.add(
        gx.ValidationDefinition(name=source, data=batch_def, suite=suite)
    )
    return context.checkpoints.add(
        gx.Checkpoint(
            name=source,
            validation_definitions=[validation],
            actions=[UpdateDataDocsAction(name="update_data_docs", site_names=[SITE])],
        )
    )


def _upload(storage: Storage, site_dir: Path, prefix: str) -> str:
    index = site_dir / "index.html"
    pages = sorted(p for p in site_dir.rglob("*.html") if p != index)
    if not index.is_file():
        raise FileNotFoundError(f"GX rendered no index.html into {site_dir}")
    assets = [site_dir / a for a in _ASSETS if (site_dir / a).is_file()]
    written: set[str] = set()
    for path in [*assets, *pages, index]:  # the index last: an index means a complete site
        key = f"{prefix}/{path.relative_to(site_dir).as_posix()}"
        storage.write_bytes(key, path.read_bytes())
        written.add(key)
    _delete_stale(storage, prefix, written)
    return f"{prefix}/index.html"


def _delete_stale(storage: Storage, prefix: str, keep: set[str]) -> None:
    # A re-validated version (a failed gate run again) renders its validation page under a new
    # run time; the new index no longer links the old page, so it goes. Storage lists one level
    # at a time and a file lists no children.
    folders = [prefix]
    while folders:
        for key in storage.list(folders.pop()):
            if key in keep:
                continue
            if storage.list(key):
                folders.append(key)
            elif key.endswith((".html", ".ico")):
                storage.delete(key)
