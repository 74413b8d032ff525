"""Proxy usefulness: does a labelled augflow dataset help a small classifier? (issue 13)

The real labelled images are a request's inputs (Parquet rows with a `label` column, listed the
way the flow lists them). They are split per class into a train part and an eval part by a hash of
each source id (fixed, never random); synthetic rows made from eval sources are left out, so no
eval image reaches training in any form. For each seed the tiny CNN of
:mod:`augflow.models.proxy` trains twice with the same initial weights and batch draws: on the
real train part alone, and with ``share`` of every batch drawn from the synthetic rows (labels from
their ``class_label``). The lift is the paired per-seed difference of eval accuracy, with a 95%
t interval. Images are compared as grey ``PROXY_SIDE``×``PROXY_SIDE`` pictures: the proxy is
meant for small labelled sets (the benchmark's digits; docs/usefulness.md), not for judging
high-resolution photos.

Entry points: :func:`proxy_check` (the quality gate's ``quality.min_proxy_lift``) and
:func:`evaluate_proxy` (``augflow evaluate NAME@VERSION --proxy``).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
from collections import defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass

import numpy as np
import pyarrow.parquet as pq
import torch
from PIL import Image

from augflow.models.proxy import TrainConfig, accuracy, mean_ci, paired_lift, train_classifier
from augflow.schemas.errors import InputError
from augflow.schemas.names import parse_ref
from augflow.schemas.quality import QualityCheck
from augflow.schemas.records import SourceItem
from augflow.schemas.request import AugmentRequest, parse_request
from augflow.tasks.inputs import list_sources
from augflow.tasks.register import get_version
from augflow.tasks.storage import Storage, open_uri

PROXY_SIDE = 16
#: the gate's seeds (each costs two short trainings); evaluate defaults to more
GATE_SEEDS = 3
#: more rows than this are subsampled (by a hash of the row id): the trainer's cost does not grow
#: with the data, decoding does
MAX_ROWS = 5000


@dataclass(frozen=True)
class Labelled:
    images: np.ndarray  # uint8 (N, S, S) grey
    labels: np.ndarray  # int64 (N,)
    ids: list[str]  # source ids (real) or the source id each synthetic row was made from


@dataclass(frozen=True)
class ProxyResult:
    """Eval accuracy of the real-only and the real+synthetic classifier, and the paired lift."""

    real: dict
    augmented: dict
    lift: dict
    seeds: int
    share: float
    num_classes: int
    real_train: int
    real_eval: int
    synthetic: int
    synthetic_dropped: int  # rows made from eval sources, or with a label outside the classes

    def to_json(self) -> dict:
        return asdict(self)

    def line(self) -> str:
        lo, hi = self.lift["ci95"]
        return (
            f"proxy lift {self.lift['mean']:+.3f} (95% CI {lo:+.3f}..{hi:+.3f}, {self.seeds} seeds): "
            f"eval accuracy {self.real['mean']:.3f} real-only vs {self.augmented['mean']:.3f} "
            f"with {self.synthetic} synthetic rows at share {self.share:g} "
            f"({self.real_train} real train / {self.real_eval} eval images, "
            f"{self.num_classes} classes)"
        )


# --- reading ---------------------------------------------------------------------------------


def _grey(data: bytes, side: int) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as im:
        g = im.convert("L")
        if g.size != (side, side):
            g = g.resize((side, side), Image.Resampling.BILINEAR)
        return np.asarray(g, dtype=np.uint8)


def _cell(value: object) -> bytes | None:
    data = value.get("bytes") if isinstance(value, dict) else value
    return data if isinstance(data, bytes) and data else None


def _keep(ids: Sequence[str], limit: int) -> set[int]:
    """Indices of at most ``limit`` rows, picked by a hash of their id (stable across runs)."""
    if len(ids) <= limit:
        return set(range(len(ids)))
    ranked = sorted(range(len(ids)), key=lambda i: hashlib.sha256(ids[i].encode()).digest())
    return set(ranked[:limit])


def read_real(request: AugmentRequest, side: int = PROXY_SIDE) -> Labelled:
    """The labelled sources of a request (its inputs as the flow lists them); unlabelled ones
    are left out. InputError when none carries a label."""
    items = [s for s in list_sources(request) if s.label is not None]
    if not items:
        raise InputError(
            f"inputs {request.inputs!r} carry no labels; the proxy needs Parquet inputs with an "
            "integer `label` column"
        )
    keep = _keep([s.source_id for s in items], MAX_ROWS)
    items = [s for i, s in enumerate(items) if i in keep]
    by_uri: dict[str, list[SourceItem]] = defaultdict(list)
    for s in items:
        by_uri[s.uri].append(s)
    images, labels, ids = [], [], []
    for uri, group in by_uri.items():
        with open_uri(uri) as fh:
            if group[0].row is None:
                cells: list[bytes | None] = [fh.read()]
            else:
                column = pq.read_table(fh, columns=["image"]).column("image")
                cells = [_cell(column[s.row].as_py()) for s in group if s.row is not None]
        for s, data in zip(group, cells, strict=True):
            if data is None:
                continue
            images.append(_grey(data, side))
            labels.append(int(s.label or 0))
            ids.append(s.source_id)
    return Labelled(np.stack(images), np.asarray(labels, dtype=np.int64), ids)


def read_synthetic(storage: Storage, keys: Sequence[str], side: int = PROXY_SIDE) -> Labelled:
    """The rows of committed shard files that carry a class_label."""
    if not keys:
        return Labelled(np.zeros((0, side, side), np.uint8), np.zeros(0, np.int64), [])
    table = storage.read_parquet(keys, columns=["image", "class_label", "source_id", "row_id"])
    labels = table.column("class_label").to_pylist()
    row_ids = table.column("row_id").to_pylist()
    labelled = [i for i, v in enumerate(labels) if v is not None]
    keep = _keep([row_ids[i] for i in labelled], MAX_ROWS)
    picked = [i for k, i in enumerate(labelled) if k in keep]
    cells = table.column("image").to_pylist()
    sources = table.column("source_id").to_pylist()
    images = [_grey(_cell(cells[i]) or b"", side) for i in picked]
    return Labelled(
        np.stack(images) if images else np.zeros((0, side, side), np.uint8),
        np.asarray([labels[i] for i in picked], dtype=np.int64),
        [sources[i] for i in picked],
    )


# --- the measurement ---------------------------------------------------------------------------


def split_eval(real: Labelled, eval_fraction: float) -> tuple[np.ndarray, np.ndarray]:
    """(train, eval) indices: per class, the ids with the smallest hashes go to eval; a class
    keeps at least one train image, and gets an eval image once it has two."""
    train: list[int] = []
    held: list[int] = []
    for c in np.unique(real.labels):
        idx = sorted(
            np.flatnonzero(real.labels == c).tolist(),
            key=lambda i: hashlib.sha256(real.ids[i].encode()).digest(),
        )
        n_eval = min(len(idx) - 1, max(1, int(len(idx) * eval_fraction))) if len(idx) > 1 else 0
        held += idx[:n_eval]
        train += idx[n_eval:]
    return np.asarray(sorted(train), dtype=np.int64), np.asarray(sorted(held), dtype=np.int64)


@contextlib.contextmanager
def _one_thread() -> Iterator[None]:
    # convolutions this small run fastest on one thread; more only wait for each other (and the
    # gate shares its process and CPUs with the flow)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def proxy_lift(
    real: Labelled,
    synthetic: Labelled,
    *,
    seeds: int = 5,
    share: float = 0.5,
    eval_fraction: float = 0.5,
    cfg: TrainConfig | None = None,
) -> ProxyResult:
    """Train real-only and real+synthetic classifiers per seed; score both on the eval part."""
    if not 0 < share < 1:
        raise ValueError(f"share must be in (0, 1), got {share}")
    if seeds < 2:
        raise ValueError("the proxy needs at least 2 seeds for a confidence interval")
    train, held = split_eval(real, eval_fraction)
    if len(held) == 0:
        raise InputError("the labelled inputs are too small for the proxy: no class has 2 images")
    num_classes = int(real.labels.max()) + 1
    eval_ids = {real.ids[i] for i in held}
    usable = np.asarray(
        [
            sid not in eval_ids and 0 <= lab < num_classes
            for sid, lab in zip(synthetic.ids, synthetic.labels, strict=True)
        ],
        dtype=bool,
    )
    if not usable.any():
        raise InputError(
            "no synthetic row can train the proxy: none carries a class_label of the inputs' "
            "classes from a source outside the eval part"
        )
    sx, sy = synthetic.images[usable], synthetic.labels[usable]
    rx, ry = real.images[train], real.labels[train]
    ex, ey = real.images[held], real.labels[held]
    base, aug = [], []
    with _one_thread():
        for seed in range(seeds):
            alone = train_classifier(rx, ry, seed, cfg=cfg, num_classes=num_classes)
            base.append(accuracy(alone, ex, ey))
            mixed = train_classifier(
                rx, ry, seed, synth_x=sx, synth_y=sy, share=share, cfg=cfg, num_classes=num_classes
            )
            aug.append(accuracy(mixed, ex, ey))
    return ProxyResult(
        real={**mean_ci(base), "per_seed": base},
        augmented={**mean_ci(aug), "per_seed": aug},
        lift=paired_lift(aug, base),
        seeds=seeds,
        share=share,
        num_classes=num_classes,
        real_train=len(train),
        real_eval=len(held),
        synthetic=int(usable.sum()),
        synthetic_dropped=int((~usable).sum()),
    )


# --- entry points --------------------------------------------------------------------------------


def proxy_check(
    storage: Storage, request: AugmentRequest, data_files: list[str], *, seeds: int = GATE_SEEDS
) -> QualityCheck:
    """The gate's ``quality.min_proxy_lift``: passes when the mean lift reaches it."""
    limit = request.quality.min_proxy_lift
    if limit is None:
        raise ValueError("proxy_check runs only when quality.min_proxy_lift is set")
    try:
        result = proxy_lift(read_real(request), read_synthetic(storage, data_files), seeds=seeds)
    except InputError as exc:
        return QualityCheck(
            name="proxy_lift",
            passed=False,
            observed=None,
            detail=f"quality.min_proxy_lift is set but the proxy cannot run: {exc}",
        )
    return QualityCheck(
        name="proxy_lift",
        passed=result.lift["mean"] >= limit,
        observed=round(result.lift["mean"], 6),
        detail=f"{result.line()}; required a mean lift of at least {limit:+.3f}",
    )


def evaluate_proxy(
    root: str,
    ref: str,
    *,
    real: str | None = None,
    seeds: int = 5,
    share: float = 0.5,
) -> ProxyResult:
    """The proxy lift of registered version ``ref`` (``NAME@VERSION``) under output root ``root``.

    ``real``: the labelled images to compare against (a Parquet file or folder with an integer
    `label` column, or a ``NAME@VERSION`` whose rows carry class_label); default: the inputs the
    version was made from, as its registry entry records them.
    """
    storage = Storage(root)
    name, version = parse_ref(ref)
    entry = get_version(storage, name, version)
    # the output root is this one wherever the version was first written (a ref resolves here)
    request = parse_request({**entry.request, "output": root})
    if real is not None:
        request = request.model_copy(update={"inputs": real})
    elif request.inputs is None:
        raise InputError(
            f"{ref} was generated from no inputs; give the real labelled images to compare "
            "against (real=...)"
        )
    synthetic = read_synthetic(storage, [f.key for f in entry.files])
    return proxy_lift(read_real(request), synthetic, seeds=seeds, share=share)
