"""Great Expectations Data Docs for a version: the gate's suite run through a GX Checkpoint with an
``UpdateDataDocsAction``, and the HTML site it renders stored beside the quality report.

GX users look for a Checkpoint and Data Docs; the gate's verdict and the Markdown/JSON report stay
with :mod:`augflow.tasks.validate`. The suite is rebuilt from the GX result the gate already
produced (each result carries its expectation's type, arguments and ``meta``), so the Data Docs
show exactly the expectations the gate ran, whatever the gate builds, and this module never needs
to change when the gate's checks do.

The site is rendered into a temporary folder by GX's own ``SiteBuilder`` and uploaded through
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
import logging
import os
import tempfile
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd

from augflow.schemas.errors import StorageError
from augflow.schemas.request import AugmentRequest
from augflow.tasks.layout import RunLayout, data_docs_beside
from augflow.tasks.storage import Storage

log = logging.getLogger(__name__)

#: The Data Docs site GX renders into (one per context, so the name only has to be stable).
SITE = "augflow"
#: How many failing row ids a Data Docs page lists per expectation (as the Markdown report).
MAX_EXAMPLES = 5
#: Files of the rendered site that are uploaded besides the pages (the only asset pages link).
_ASSETS = ("static/images/favicon.ico",)


def publish_data_docs(
    storage: Storage,
    request: AugmentRequest,
    version: str,
    df: pd.DataFrame,
    gx_result: dict[str, Any],
) -> str | None:
    """Run the gate's suite through a Checkpoint over ``df`` and store its Data Docs site.

    ``gx_result`` is the gate's GX validation result as a JSON dict (what the quality report's
    ``great_expectations`` field holds); ``df`` the table it validated. Returns the key of the
    site's ``index.html``, or None when the site could not be made (logged, never raised).
    """
    layout = RunLayout(request.request_hash)
    try:
        with tempfile.TemporaryDirectory(prefix="augflow-data-docs-") as site_dir:
            success = _run_checkpoint(request, version, df, gx_result, Path(site_dir))
            if success != bool(gx_result.get("success")):
                # Same suite, same rows: a different verdict means GX itself is inconsistent, and
                # the Data Docs would contradict the report. Say so rather than hide it.
                log.warning(
                    "Data Docs of %s@%s: the checkpoint says success=%s, the gate said %s",
                    request.dataset,
                    version,
                    success,
                    gx_result.get("success"),
                )
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


def _run_checkpoint(
    request: AugmentRequest,
    version: str,
    df: pd.DataFrame,
    gx_result: dict[str, Any],
    site_dir: Path,
) -> bool:
    # Offline by design (no usage analytics); must be set before GX is first imported.
    os.environ["GX_ANALYTICS_ENABLED"] = "false"
    import great_expectations as gx
    from great_expectations.checkpoint import UpdateDataDocsAction
    from great_expectations.core.run_identifier import RunIdentifier
    from great_expectations.data_context.types.base import ProgressBarsConfig

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
        # GX names pages after the data source and asset: `metrics` says what was validated.
        source = context.data_sources.add_pandas(f"{request.dataset}-{version}")
        batch_def = source.add_dataframe_asset("metrics").add_batch_definition_whole_dataframe(
            "all_rows"
        )
        suite = context.suites.add(suite_from_result(gx, f"augflow-{request.dataset}", gx_result))
        validation = context.validation_definitions.add(
            gx.ValidationDefinition(name=f"quality-{version}", data=batch_def, suite=suite)
        )
        result_format: dict[str, Any] = {
            "result_format": "SUMMARY",
            "partial_unexpected_count": MAX_EXAMPLES,
        }
        if "row_id" in df.columns:
            result_format["unexpected_index_column_names"] = ["row_id"]
        checkpoint = context.checkpoints.add(
            gx.Checkpoint(
                name=f"augflow-{uuid.uuid4().hex[:8]}",
                validation_definitions=[validation],
                actions=[UpdateDataDocsAction(name="data_docs", site_names=[SITE])],
                result_format=result_format,
            )
        )
        result = checkpoint.run(
            batch_parameters={"dataframe": df},
            # the run name is a folder of the site: the version (the suite names the dataset)
            run_id=RunIdentifier(run_name=version, run_time=datetime.now(UTC)),
        )
    return bool(result.success)


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
