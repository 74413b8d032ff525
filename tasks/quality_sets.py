"""The quality gate's row-level effect checks and set-level checks, streamed shard by shard.

Effect checks (models/effects.py) read only the effect metric columns of one shard file at a time.
Set checks (models/setmetrics.py) read one shard's images at a time, keep an 8-byte perceptual
hash and a row id per row and two bounded feature reservoirs, and compare the outputs with a
reference set: the inputs (img2img, denoise, upscale, inpaint) or ``quality.reference``
(generate), read the same way. Memory therefore stays bounded by a shard, not by the version.

Plain functions, no Prefect: tasks/validate.py calls them and folds the results into its report;
``augflow evaluate`` calls :func:`set_level` on a registered version.
"""

from __future__ import annotations

import logging
import math
from collections import defaultdict
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow.parquet as pq
from PIL import Image

from augflow.models.effects import EffectThresholds, effect_checks
from augflow.models.images import ImageRejected, decode_image
from augflow.models.reservoir import Reservoir
from augflow.schemas.errors import StorageError
from augflow.schemas.quality import QualityCheck
from augflow.schemas.records import SourceItem
from augflow.schemas.request import AugmentRequest, QualityThresholds
from augflow.schemas.rows import EFFECT_COLUMN_NAMES
from augflow.tasks.storage import Storage, open_uri

if TYPE_CHECKING:  # imported where the set checks run: a flow process that only plans and fans
    # out never loads them, and only a run with a reference loads torch (tests/test_layers.py)
    from augflow.models.feature_stats import FeatureStats
    from augflow.models.setmetrics import SetCheckResult, SetThresholds

log = logging.getLogger(__name__)

#: How many example row ids a failed check names.
MAX_EXAMPLES = 5
#: Reference images decoded at a time.
REFERENCE_BATCH = 64


def effect_thresholds(q: QualityThresholds) -> EffectThresholds:
    """The request's effect thresholds: its ``quality`` fields where set, the defaults otherwise."""
    return EffectThresholds(
        **{k: getattr(q, k) for k in EffectThresholds.names() if getattr(q, k, None) is not None}
    )


def set_thresholds(q: QualityThresholds) -> SetThresholds:
    from augflow.models.setmetrics import SetThresholds

    names = [f for f in SetThresholds.__dataclass_fields__]
    return SetThresholds(**{k: getattr(q, k) for k in names if getattr(q, k, None) is not None})


# --- row level: effect checks --------------------------------------------------------------------


@dataclass
class _EffectTally:
    requirement: str
    failed: int = 0
    examples: list[str] = field(default_factory=list)


#: Values of one effect column kept for its median: exact up to this many rows, a seeded uniform
#: sample of this size beyond (the median's rank error is then about 1/sqrt(n) ≈ 0.3 percentile).
MEDIAN_SAMPLE = 100_000


class _ColumnSummary:
    """Min, max and median of a column streamed shard by shard, in bounded memory: min and max
    exact, the median from a :class:`~augflow.models.reservoir.Reservoir` of at most
    :data:`MEDIAN_SAMPLE` values."""

    def __init__(self, capacity: int = MEDIAN_SAMPLE, seed: int = 0) -> None:
        self.low, self.high = math.inf, -math.inf
        self._sample = Reservoir(capacity, 1, seed, dtype=np.float64)

    @property
    def seen(self) -> int:
        return self._sample.seen

    def add(self, values: np.ndarray) -> None:
        if not len(values):
            return
        self.low = min(self.low, float(values.min()))
        self.high = max(self.high, float(values.max()))
        self._sample.add(values)

    def metrics(self, name: str) -> dict[str, float]:
        if not self._sample.filled:
            return {}
        return {
            f"{name}_min": self.low,
            f"{name}_median": float(np.median(self._sample.data)),
            f"{name}_max": self.high,
        }


def effect_level(
    storage: Storage, request: AugmentRequest, data_files: Sequence[str]
) -> tuple[list[QualityCheck], dict[str, float | None]]:
    """Apply the effect checks of ``request.operation`` to every committed row, one shard file at
    a time, in memory bounded by the shard size. Returns one check per effect check, and per
    effect column its min/median/max over the rows that have it (``metrics``; the median from a
    sample beyond :data:`MEDIAN_SAMPLE` rows)."""
    op = request.operation
    thresholds = effect_thresholds(request.quality)
    noise_level = getattr(op, "noise_level", None)
    strength = getattr(op, "strength", None)
    tallies: dict[str, _EffectTally] = {}
    summaries: dict[str, _ColumnSummary] = defaultdict(_ColumnSummary)
    total = 0
    if op.kind not in ("img2img", "denoise", "upscale", "inpaint"):
        return [], {}
    for key in data_files:
        table = storage.read_parquet([key], columns=["row_id", *EFFECT_COLUMN_NAMES])
        if table.num_rows == 0:
            continue
        total += table.num_rows
        ids = table.column("row_id").to_pylist()
        columns = {n: table.column(n) for n in EFFECT_COLUMN_NAMES}
        for result in effect_checks(
            op.kind,
            columns,
            noise_level=noise_level,
            strength=strength,
            thresholds=thresholds,
        ):
            tally = tallies.setdefault(result.name, _EffectTally(result.requirement))
            bad = np.flatnonzero(~result.passed)
            tally.failed += len(bad)
            for i in bad[: MAX_EXAMPLES - len(tally.examples)]:
                tally.examples.append(str(ids[i]))
        for name, col in columns.items():
            if col.null_count < len(col):
                arr = np.asarray(col.to_numpy(zero_copy_only=False), dtype=np.float64)
                summaries[name].add(arr[np.isfinite(arr)])
    checks = []
    for name, t in tallies.items():
        passed = t.failed == 0
        detail = (
            f"{t.requirement}: all {total} rows pass"
            if passed
            else f"{t.failed} of {total} rows fail {t.requirement}"
        )
        checks.append(
            QualityCheck(
                name=name,
                passed=passed,
                observed=t.failed,
                threshold=t.requirement,
                detail=detail,
                failed_rows=t.failed,
                examples=t.examples,
            )
        )
    metrics: dict[str, float | None] = {}
    for name, summary in summaries.items():
        metrics.update(summary.metrics(name))
    return checks, metrics


# --- set level -----------------------------------------------------------------------------------


def _decode_cells(values: Iterable[Any]) -> list[Image.Image | None]:
    out: list[Image.Image | None] = []
    for value in values:
        data = value.get("bytes") if isinstance(value, dict) else value
        try:
            out.append(decode_image(data, "row") if data else None)
        except ImageRejected:
            out.append(None)  # the form checks count undecodable rows
    return out


def iter_output_shards(
    storage: Storage, data_files: Sequence[str]
) -> Iterator[tuple[list[str], list[str | None], list[Image.Image]]]:
    """(row ids, source ids, images) of one committed shard file at a time."""
    for key in data_files:
        table = storage.read_parquet([key], columns=["row_id", "source_id", "image"])
        images = _decode_cells(table.column("image").to_pylist())
        ids = table.column("row_id").to_pylist()
        srcs = table.column("source_id").to_pylist()
        keep = [i for i, img in enumerate(images) if img is not None]
        yield (
            [str(ids[i]) for i in keep],
            [srcs[i] for i in keep],
            [images[i] for i in keep],  # type: ignore[misc]
        )


def iter_source_images(
    sources: Sequence[SourceItem], batch: int = REFERENCE_BATCH
) -> Iterator[tuple[list[str], list[Image.Image]]]:
    """(ids, decoded images) of input items, ``batch`` at a time; unreadable ones are skipped (the
    run quarantined them)."""
    ids: list[str] = []
    imgs: list[Image.Image] = []
    by_file: dict[str, list[tuple[str, int]]] = defaultdict(list)

    def take(sid: str, data: bytes | None) -> None:
        if not data:
            return
        try:
            imgs.append(decode_image(data, sid))
            ids.append(sid)
        except ImageRejected:
            pass

    for src in sources:
        if src.rejected is not None:
            continue  # the listing knows it is unusable (a FIFO would block the read forever)
        if src.row is not None:
            by_file[src.uri].append((src.source_id, src.row))
            continue
        try:
            with open_uri(src.uri) as fh:
                take(src.source_id, fh.read())
        except StorageError:
            raise
        except Exception as exc:  # an unreadable input was quarantined by the run
            log.debug("reference %s skipped: %s", src.uri, exc)
        if len(ids) >= batch:
            yield ids, imgs
            ids, imgs = [], []
    for uri, wanted in by_file.items():
        with open_uri(uri) as fh:
            column = pq.read_table(fh, columns=["image"]).column("image")
        for sid, row in wanted:
            value = column[row].as_py()
            take(sid, value.get("bytes") if isinstance(value, dict) else value)
            if len(ids) >= batch:
                yield ids, imgs
                ids, imgs = [], []
    if ids:
        yield ids, imgs


def reference_sources(request: AugmentRequest, reference: str | None = None) -> list[SourceItem]:
    """The images outputs are compared with: ``reference`` (a folder, Parquet or name@version), or
    the request's ``quality.reference``, or, for operations that take inputs, the inputs."""
    from augflow.tasks.inputs import list_sources

    ref = reference or request.quality.reference
    if ref is None:
        if not request.operation.takes_inputs:
            return []
        return list_sources(request)
    # list_sources reads a request's ``inputs``; the reference is listed the same way.
    as_inputs = AugmentRequest.model_construct(
        **{**dict(request), "inputs": ref, "operation": request.operation}
    )
    return list_sources(as_inputs)


def set_level(
    storage: Storage,
    request: AugmentRequest,
    data_files: Sequence[str],
    reference: str | None = None,
    features: str | None = None,
) -> tuple[list[SetCheckResult], dict[str, Any]]:
    """Near-duplicates, memorisation (generate with a reference), variant spread (img2img),
    diversity and KID/FID against the reference, streamed over the shard files."""
    from augflow.models.setmetrics import (
        NearDuplicates,
        ReferenceMatches,
        VariantSpread,
        phashes,
        set_checks,
    )

    kind = request.operation.kind
    t = set_thresholds(request.quality)
    dups = NearDuplicates(t.max_hamming, ignore_same_group=kind == "img2img")
    variants = VariantSpread(t.variant_max_pair_psnr) if kind == "img2img" else None
    sources = reference_sources(request, reference)
    memo = ReferenceMatches(t.max_hamming) if kind == "generate" and sources else None
    input_dups = NearDuplicates(t.max_hamming) if request.operation.takes_inputs else None
    extractor = features if features is not None else request.quality.features
    feats = _feature_stats(extractor) if sources else None

    for ids, srcs, images in iter_output_shards(storage, data_files):
        if not images:
            continue
        hashes = phashes(images)
        dups.update_hashes(hashes, ids, srcs if kind == "img2img" else None)
        if memo is not None:
            memo.update_hashes(hashes, ids)
        if variants is not None:
            variants.update(images, [str(s) for s in srcs], ids)
            variants.flush()  # the planner keeps every variant of a source in one shard
        if feats is not None:
            feats.update(images, real=False)
    inputs_seen = 0
    for ids, images in iter_source_images(sources):
        hashes = phashes(images)
        inputs_seen += len(ids)
        if memo is not None:
            memo.add_reference_hashes(hashes, ids)
        if input_dups is not None and reference is None and request.quality.reference is None:
            input_dups.update_hashes(hashes, ids)
        if feats is not None:
            feats.update(images, real=True)

    reports: dict[str, Any] = {"duplicates": dups.compute()}
    if input_dups is not None and inputs_seen:
        reports["input_duplicates"] = input_dups.compute()
    if memo is not None:
        reports["memorisation"] = memo.compute()
    if variants is not None:
        reports["variants"] = variants.compute()
    if feats is not None:
        reports["distribution"] = feats.compute()
    results = set_checks(kind, thresholds=t, **reports)
    return results, _flat_metrics(reports)


def _feature_stats(extractor: str | None) -> FeatureStats:
    # imported here: torch (about a second of CPU) only when there is a reference to compare with
    from augflow.models.feature_stats import FeatureStats
    from augflow.models.features import load_feature_extractor

    return FeatureStats(load_feature_extractor(extractor), reservoir=5000)


def _flat_metrics(reports: dict[str, Any]) -> dict[str, Any]:
    m: dict[str, Any] = {}
    d = reports.get("duplicates")
    if d is not None:
        m.update(duplicate_fraction=d.duplicate_fraction, unique_fraction=d.unique_fraction)
    d = reports.get("input_duplicates")
    if d is not None:
        m["input_duplicate_fraction"] = d.duplicate_fraction
    d = reports.get("memorisation")
    if d is not None:
        m.update(memorised_fraction=d.matched_fraction, reference_images=d.reference_images)
    d = reports.get("variants")
    if d is not None and d.sources:
        m["variant_max_pair_psnr"] = d.max_pair_psnr
    d = reports.get("distribution")
    if d is not None:
        m.update(
            kid=d.kid,
            kid_std=d.kid_std,
            fid=d.fid,
            diversity_ratio=d.diversity_ratio,
            output_diversity=d.output_diversity,
            reference_diversity=d.reference_diversity,
            feature_extractor=d.extractor,
            feature_digest=d.extractor_digest,
        )
    return {k: _finite(v) for k, v in m.items()}


def _finite(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


def as_quality_check(r: SetCheckResult) -> QualityCheck:
    """A set check in the report's terms; examples become the row ids they name."""
    examples: list[str] = []
    for ex in r.examples:
        for key in ("row_id", "row_ids", "rows", "ids"):
            v = ex.get(key)
            if isinstance(v, str):
                examples.append(v)
            elif isinstance(v, (list, tuple)):
                examples.extend(str(x) for x in v)
    uniq = list(dict.fromkeys(examples))[:MAX_EXAMPLES]
    return QualityCheck(
        name=r.name,
        passed=r.passed,
        observed=_finite(r.observed),
        threshold=r.threshold,
        detail=r.detail,
        failed_rows=0,
        examples=uniq,
    )
